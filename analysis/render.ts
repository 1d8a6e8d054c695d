/**
 * Figures as files: rows as CSV, and a Vega-Lite spec rendered headless to SVG, PNG (resvg) or PDF (pdfkit) with
 * the fonts it embeds. The renderers are imported on first use: listing or building figures does not load them.
 * analysis/figures.ts re-exports everything here, so importers keep one entry point.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { InputError } from '../src/core/errors.js';
import type { Row, VlSpec } from './figures.js';

/** CSV with a header from the union of keys (RFC 4180 quoting); nested values as JSON. */
export function toCsv(rows: readonly Row[]): string {
  if (rows.length === 0) return '';
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown) => {
    const s = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [keys.join(','), ...rows.map((r) => keys.map((k) => cell(r[k])).join(','))].join('\n') + '\n';
}

export type ExportFormat = 'svg' | 'png' | 'pdf';

export interface RenderOptions {
  /** PNG pixel density (default 3: about 300 dpi at the chart's size in CSS pixels at 96 dpi, ×~1). */
  scale?: number;
  /** Receives Vega-Lite/Vega warnings (default: ignored). */
  onWarning?: (message: string) => void;
}

/** Compiles a figure spec to SVG with vega's headless View; no browser involved. */
export async function renderSvg(spec: VlSpec, options: RenderOptions = {}): Promise<string> {
  const [vl, vega] = await Promise.all([import('vega-lite'), import('vega')]);
  const warn = options.onWarning ?? (() => {});
  const logger = {
    level: () => logger,
    error: (...a: unknown[]) => {
      throw new Error(a.map(String).join(' '));
    },
    warn: (...a: unknown[]) => {
      warn(a.map(String).join(' '));
      return logger;
    },
    info: () => logger,
    debug: () => logger,
  };
  const compiled = vl.compile(spec as never, { logger: logger as never }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logLevel: vega.Warn });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * The TrueType fonts exports embed. The PDF core fonts (Helvetica) cover WinAnsi only, so ℓ, Δ, −, ≤, →, ·² and the
 * like vanished from PDFs; DejaVu Sans has every character the figures use. Looked up in the npm package
 * `dejavu-fonts-ttf` first (no system dependency), then in the usual system folders (Debian's fonts-dejavu-core,
 * Fedora, Arch, Homebrew). null when neither has it.
 */
export interface ExportFonts {
  sans: string;
  sansBold: string;
  sansOblique: string;
  sansBoldOblique: string;
  mono: string;
  monoBold: string;
  /** Where they came from (for messages and tests). */
  source: string;
}

const FONT_FILES = {
  sans: 'DejaVuSans.ttf',
  sansBold: 'DejaVuSans-Bold.ttf',
  sansOblique: 'DejaVuSans-Oblique.ttf',
  sansBoldOblique: 'DejaVuSans-BoldOblique.ttf',
  mono: 'DejaVuSansMono.ttf',
  monoBold: 'DejaVuSansMono-Bold.ttf',
} as const;

export const SYSTEM_FONT_DIRS = [
  '/usr/share/fonts/truetype/dejavu',
  '/usr/share/fonts/dejavu-sans-fonts',
  '/usr/share/fonts/dejavu',
  '/usr/share/fonts/TTF',
  '/opt/homebrew/share/fonts',
  '/usr/local/share/fonts',
];

let fontsFound: ExportFonts | null | undefined;

function fontsIn(dir: string, source: string): ExportFonts | null {
  const files = Object.fromEntries(Object.entries(FONT_FILES).map(([k, f]) => [k, join(dir, f)])) as Omit<ExportFonts, 'source'>;
  return Object.values(files).every((f) => existsSync(f)) ? { ...files, source } : null;
}

export function exportFonts(): ExportFonts | null {
  if (fontsFound !== undefined) return fontsFound;
  let pkgDir: string | null = null;
  try {
    pkgDir = dirname(createRequire(import.meta.url).resolve('dejavu-fonts-ttf/package.json'));
  } catch {
    // not installed: try the system's copy
  }
  fontsFound = (pkgDir && fontsIn(join(pkgDir, 'ttf'), 'npm package dejavu-fonts-ttf')) || null;
  for (const dir of SYSTEM_FONT_DIRS) fontsFound ??= fontsIn(dir, dir);
  return fontsFound;
}

/** SVG → PNG (resvg) at `scale`× the SVG's pixel size, with the export fonts (and the system's) available. */
export async function svgToPng(svg: string, scale = 3): Promise<Uint8Array> {
  const { Resvg } = await import('@resvg/resvg-js');
  const fonts = exportFonts();
  const r = new Resvg(svg, {
    fitTo: { mode: 'zoom', value: scale },
    background: 'white',
    font: {
      loadSystemFonts: true,
      ...(fonts ? { fontFiles: [fonts.sans, fonts.sansBold, fonts.sansOblique, fonts.sansBoldOblique, fonts.mono, fonts.monoBold] } : {}),
      defaultFontFamily: 'DejaVu Sans',
      sansSerifFamily: 'DejaVu Sans',
    },
  });
  return new Uint8Array(r.render().asPng());
}

/** Characters of the PDF core fonts' WinAnsi encoding (printable ASCII and Latin-1, plus the cp1252 extras). */
const WIN_ANSI = /^[\x20-\x7e\xa0-\xff\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178\s]*$/;

/** The text content of an SVG's text elements, entities decoded (enough to know which characters are drawn). */
function svgText(svg: string): string {
  return [...svg.matchAll(/<text\b[^>]*>([^<]*)</g)]
    .map((m) => m[1]!)
    .join(' ')
    .replace(/&#x([0-9a-f]+);/gi, (_, h: string) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&(amp|lt|gt|quot|apos);/g, (_, e: string) => ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" })[e]!);
}

/**
 * SVG → single-page vector PDF, page size = chart size (1 CSS px = 0.75 pt). Text is set in DejaVu Sans (embedded,
 * subset) so every glyph survives; without that font the core Helvetica is used only when every character is in its
 * encoding, otherwise the export fails and says what to install rather than dropping characters.
 */
export async function svgToPdf(svg: string): Promise<Uint8Array> {
  const [{ default: PDFDocument }, { default: SVGtoPDF }] = await Promise.all([import('pdfkit'), import('svg-to-pdfkit')]);
  const fonts = exportFonts();
  if (!fonts) {
    const outside = [...new Set([...svgText(svg)].filter((c) => !WIN_ANSI.test(c)))];
    if (outside.length) {
      throw new InputError(
        `PDF export: the figure uses ${outside.join(' ')}, which the PDF core fonts lack, and no DejaVu Sans TTF was found (npm package dejavu-fonts-ttf, or fonts-dejavu-core in ${SYSTEM_FONT_DIRS[0]}); install one, or export SVG/PNG`,
      );
    }
  }
  const w = Number(/<svg[^>]*\swidth="([\d.]+)"/.exec(svg)?.[1] ?? 600);
  const h = Number(/<svg[^>]*\sheight="([\d.]+)"/.exec(svg)?.[1] ?? 400);
  const doc = new PDFDocument({ size: [w * 0.75, h * 0.75], margin: 0, info: { Title: 'viral-lens figure', Creator: 'viral-lens' } });
  if (fonts) {
    doc.registerFont('Sans', fonts.sans);
    doc.registerFont('Sans-Bold', fonts.sansBold);
    doc.registerFont('Sans-Oblique', fonts.sansOblique);
    doc.registerFont('Sans-BoldOblique', fonts.sansBoldOblique);
    doc.registerFont('Mono', fonts.mono);
    doc.registerFont('Mono-Bold', fonts.monoBold);
  }
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    doc.on('data', (c: Buffer) => chunks.push(c));
    doc.on('end', () => resolve());
    doc.on('error', reject);
  });
  SVGtoPDF(doc, svg, 0, 0, {
    width: w * 0.75,
    height: h * 0.75,
    // Every sans family → DejaVu Sans (or Helvetica), monospace → DejaVu Sans Mono (or Courier).
    fontCallback: (family: string, bold: boolean, italic: boolean, options: Record<string, unknown>) => {
      const mono = /mono|courier/i.test(family);
      if (fonts) {
        if (mono) {
          if (italic) options.fauxItalic = true;
          return bold ? 'Mono-Bold' : 'Mono';
        }
        return `Sans${bold && italic ? '-BoldOblique' : bold ? '-Bold' : italic ? '-Oblique' : ''}`;
      }
      const baseName = mono ? 'Courier' : 'Helvetica';
      const style = bold && italic ? '-BoldOblique' : bold ? '-Bold' : italic ? '-Oblique' : '';
      return baseName + style;
    },
    warningCallback: () => {},
  });
  doc.end();
  await done;
  return new Uint8Array(Buffer.concat(chunks));
}

/** A figure in one export format: the bytes and their content type. */
export async function renderFigure(spec: VlSpec, format: ExportFormat, options: RenderOptions = {}): Promise<{ body: Uint8Array | string; contentType: string }> {
  const svg = await renderSvg(spec, options);
  if (format === 'svg') return { body: svg, contentType: 'image/svg+xml; charset=utf-8' };
  if (format === 'png') return { body: await svgToPng(svg, options.scale ?? 3), contentType: 'image/png' };
  return { body: await svgToPdf(svg), contentType: 'application/pdf' };
}
