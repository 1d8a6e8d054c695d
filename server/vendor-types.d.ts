/**
 * Minimal declarations for the two PDF libraries used by analysis/figures.ts (neither ships types): only what the
 * export path calls.
 */
declare module 'pdfkit' {
  interface PDFDocumentOptions {
    size?: [number, number] | string;
    margin?: number;
    info?: Record<string, string>;
  }
  class PDFDocument {
    constructor(options?: PDFDocumentOptions);
    registerFont(name: string, src: string | Buffer): this;
    on(event: 'data', fn: (chunk: Buffer) => void): this;
    on(event: 'end', fn: () => void): this;
    on(event: 'error', fn: (err: Error) => void): this;
    end(): void;
  }
  export default PDFDocument;
}

declare module 'svg-to-pdfkit' {
  interface SvgToPdfOptions {
    width?: number;
    height?: number;
    preserveAspectRatio?: string;
    assumePt?: boolean;
    precision?: number;
    fontCallback?: (family: string, bold: boolean, italic: boolean, options: Record<string, unknown>) => string;
    warningCallback?: (message: string) => void;
  }
  export default function SVGtoPDF(doc: unknown, svg: string, x: number, y: number, options?: SvgToPdfOptions): void;
}
