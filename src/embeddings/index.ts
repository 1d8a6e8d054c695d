/** Embedding views of representations: seeded UMAP maps, PCA, Procrustes alignment, PCA-RGB token grids. */
export { pca, topEigen, type PcaOptions, type PcaResult, type EigenResult } from './pca.js';
export { umapEmbed, unitRows, type UmapOptions, type UmapEmbedding } from './umap.js';
export { procrustes, applyProcrustes, type ProcrustesOptions, type ProcrustesResult } from './procrustes.js';
export { pcaRgbGrid, robustUnit, rgbHex, PCA_RGB_NORMALISATION, type PcaRgbGrid, type PcaRgbOptions } from './pca-rgb.js';
