/* Convolution drivers of compactnn's integer-only engine: work split over threads, padding, tiles of output
   pixels handed to the micro-kernels of kernels.c; and the grouped / depthwise convolution (plain loops).
   Integer buffers only; no floating-point type. */

#include "kernels.h"

void cnn_rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, const uint8_t *const *ress,
                    int64_t m, const int64_t *segoff, int *ovf);
void cnn_pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf);

#define MR_TILE 96  /* pixels handed to the micro-kernels at a time */

/* Byte offset of every weight segment (one kernel row, or one kernel tap) in a padded NHWC image of width wpd. */
static int seg_offsets(const Conv *d, int64_t wpd, int64_t *segoff) {
    if (d->nseg > 4096) return -1;
    for (int64_t s = 0; s < d->nseg; s++) {
        int64_t i = d->nseg == d->kh ? s : s / d->kw, j = d->nseg == d->kh ? 0 : s % d->kw;
        segoff[s] = (i * d->dh * wpd + j * d->dw) * d->c;
    }
    return 0;
}

/* How the n images x pix output pixels are split: with padding, items are (image, band of pixels) and *bands is set;
   without, items are ranges of pixels over the whole batch. Returns the number of items. */
static int64_t work_items(int pad, int64_t n, int64_t pix, int nthreads, int64_t *bands) {
    *bands = 1;
    if (pad) {
        if (n < 2 * nthreads) *bands = (2 * nthreads + n - 1) / n;
        if (*bands > pix) *bands = pix;
        return n * *bands;
    }
    int64_t items = nthreads == 1 ? 1 : 8 * nthreads;
    return items > n * pix ? n * pix : items;
}

/* Pixel range [*p0, *p1) of work item it; with padding, pads its image into this thread's scratch and returns it,
   else returns x. The scratch keeps the image last padded there (*cached): its border (the input zero point) is
   written once, and the interior only when the image changes. */
static const uint8_t *item_span(const Conv *d, int pad, const uint8_t *x, uint8_t *scratch, int tid, int64_t it,
                                int64_t n, int64_t pix, int64_t bands, int64_t items, int64_t *cached,
                                int64_t *p0, int64_t *p1) {
    if (!pad) {
        *p0 = n * pix * it / items;
        *p1 = n * pix * (it + 1) / items;
        return x;
    }
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, hp = d->h + 2 * d->ph, imgsz = d->h * d->w * c;
    const int64_t b = it / bands, band = it % bands;
    *p0 = b * pix + pix * band / bands;
    *p1 = b * pix + pix * (band + 1) / bands;
    uint8_t *sp = scratch + tid * (hp * wpd * c + 64);
    if (*cached == b) return sp;
#ifdef __GNUC__
    if (b + 1 < n)  /* the next image into L2 while this one is computed (else its copy waits on L3) */
        for (int64_t off = 0; off < imgsz; off += 64) __builtin_prefetch(x + (b + 1) * imgsz + off, 0, 1);
#endif
    if (*cached < 0) memset(sp, (int)d->zin, hp * wpd * c);
    for (int64_t r = 0; r < d->h; r++)
        memcpy(sp + ((r + d->ph) * wpd + d->pw) * c, x + b * imgsz + r * d->w * c, d->w * c);
    *cached = b;
    return sp;
}

/* Convolution (groups == 1) on uint8 NHWC codes; a linear layer is a 1x1 conv on (rows, 1, 1, K).
   x: input (n images); res: the fused Add's residual input (same shape as y) or NULL; y: output (n, ho, wo, o);
   scratch: nthreads * (hp*wp*c + 64) bytes for padded images. With padding, work items are (image, band of output
   pixels) and each thread pads its image into its scratch; without, items are ranges of output pixels over the
   whole batch (tiles may span images). */
int cnn_conv(const Conv *d, int64_t n, const uint8_t *x, const uint8_t *res, uint8_t *y, uint8_t *scratch,
             int nthreads) {
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, pix = d->ho * d->wo, imgsz = d->h * d->w * c;
    const int pad = d->ph || d->pw;
    int64_t segoff[4096], bands;
    if (seg_offsets(d, wpd, segoff) || (d->add && !res)) return -1;
    if (n * pix * d->o * d->nseg * d->seglen < 300000) nthreads = 1;
    const int64_t items = work_items(pad, n, pix, nthreads, &bands);
    int ovf = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    {
        int64_t cached = -1;
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            int64_t p0, p1;
            const uint8_t *img = item_span(d, pad, x, scratch, thread_id(), it, n, pix, bands, items, &cached, &p0,
                                           &p1);
            const uint8_t *rows[MR_TILE], *ress[MR_TILE];
            uint8_t *outs[MR_TILE];
            int64_t b = p0 / pix, oh = (p0 % pix) / d->wo, ow = (p0 % pix) % d->wo;  /* advanced row by row */
            const int64_t chunk = d->wo <= MR_TILE ? MR_TILE / d->wo * d->wo : MR_TILE;  /* whole output rows */
            for (int64_t p = p0; p < p1; p += chunk) {
                int64_t m = p1 - p < chunk ? p1 - p : chunk;
                for (int64_t i = 0; i < m; i++) {
                    rows[i] = (pad ? img : x + b * imgsz) + (oh * d->sh * wpd + ow * d->sw) * c;
                    outs[i] = y + (p + i) * d->o * (d->raw ? 4 : 1);
                    ress[i] = res ? res + (p + i) * d->o : 0;
                    if (++ow == d->wo) { ow = 0; if (++oh == d->ho) { oh = 0; b++; } }
                }
                cnn_rows_block(d, rows, outs, res ? ress : 0, m, segoff, &ovf);
            }
        }
    }
    return ovf;
}

/* Convolution followed by a 2x2 / stride 2 max pool (no pool padding), pooled before requantization.
   y: pooled output (n, ho/2, wo/2, o). Same work split as cnn_conv, over pooled pixels. */
int cnn_conv_pool2(const Conv *d, int64_t n, const uint8_t *x, uint8_t *y, uint8_t *scratch, int nthreads) {
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, imgsz = d->h * d->w * c;
    const int64_t pwo = d->wo / 2, pix = (d->ho / 2) * pwo;
    const int pad = d->ph || d->pw;
    int64_t segoff[4096], bands;
    if (seg_offsets(d, wpd, segoff) || d->add) return -1;
    if (n * pix * 4 * d->o * d->nseg * d->seglen < 300000) nthreads = 1;
    const int64_t items = work_items(pad, n, pix, nthreads, &bands);
    int ovf = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    {
        int64_t cached = -1;
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            int64_t p0, p1;
            const uint8_t *img = item_span(d, pad, x, scratch, thread_id(), it, n, pix, bands, items, &cached, &p0,
                                           &p1);
            const uint8_t *rows[4];
            for (int64_t p = p0; p < p1; p++) {
                const int64_t b = p / pix, q = p % pix, oh = 2 * (q / pwo), ow = 2 * (q % pwo);
                const uint8_t *src = pad ? img : x + b * imgsz;
                for (int i = 0; i < 4; i++)
                    rows[i] = src + ((oh + i / 2) * d->sh * wpd + (ow + i % 2) * d->sw) * c;
                cnn_pool4_block(d, rows, y + p * d->o, segoff, &ovf);
            }
        }
    }
    return ovf;
}

/* Grouped / depthwise convolution, plain loops (weights (o, kh, kw, cg) int8, unpacked). */
int cnn_conv_grouped(const Conv *d, int64_t n, int64_t groups, const int8_t *w, const uint8_t *x, uint8_t *y,
                     int nthreads) {
    const int64_t cg = d->c / groups, og = d->o / groups;
    int ovf = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    for (int64_t r = 0; r < n * d->ho; r++) {
        const int64_t b = r / d->ho, oh = r % d->ho;
        for (int64_t ow = 0; ow < d->wo; ow++)
            for (int64_t oc = 0; oc < d->o; oc++) {
                const int64_t g = oc / og;
                int64_t acc = 0;
                for (int64_t i = 0; i < d->kh; i++) {
                    const int64_t ih = oh * d->sh - d->ph + i * d->dh;
                    for (int64_t j = 0; j < d->kw; j++) {
                        const int64_t iw = ow * d->sw - d->pw + j * d->dw;
                        const int8_t *wk = w + ((oc * d->kh + i) * d->kw + j) * cg;
                        if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w) {
                            for (int64_t k = 0; k < cg; k++) acc += d->zin * wk[k];
                        } else {
                            const uint8_t *xp = x + ((b * d->h + ih) * d->w + iw) * d->c + g * cg;
                            for (int64_t k = 0; k < cg; k++) acc += xp[k] * wk[k];
                        }
                    }
                }
                y[((b * d->ho + oh) * d->wo + ow) * d->o + oc] = requant1c(d, acc, oc, &ovf);
            }
    }
    return ovf;
}

/* y[r, k] = x[r * xstride + off + k] for r < rows, k < c: one group's input channels, contiguous. */
void cnn_gather_channels(const uint8_t *x, uint8_t *y, int64_t rows, int64_t xstride, int64_t off, int64_t c) {
    for (int64_t r = 0; r < rows; r++) memcpy(y + r * c, x + r * xstride + off, c);
}

/* y[r, off + k] = x[r, k] for r < rows, k < c: one group's output channels into the full output. */
void cnn_scatter_channels(const uint8_t *x, uint8_t *y, int64_t rows, int64_t ystride, int64_t off, int64_t c) {
    for (int64_t r = 0; r < rows; r++) memcpy(y + r * ystride + off, x + r * c, c);
}

/* Grouped convolution as one dense conv per group (ds[g]: groups 1, cg input and og output channels each), all in
   one parallel region: work items are (image, group, band of output pixels); each thread gathers its group's
   channels of its image into its padded scratch image (cg channels per pixel, border = the input zero point) and
   runs the dense micro-kernels on it, writing the group's og channels of each output pixel in place (pixel stride
   otot; a partial block of 16 channels is written with a masked store, so neighbouring groups are untouched).
   scratch: nthreads * (hp*wp*cg + 64) bytes. */
int cnn_conv_groups(const Conv *const *ds, int64_t groups, int64_t ctot, int64_t otot, int64_t n, const uint8_t *x,
                    uint8_t *y, uint8_t *scratch, int nthreads) {
    const Conv *d = ds[0];
    const int64_t cg = d->c, og = d->o, wpd = d->w + 2 * d->pw, hp = d->h + 2 * d->ph, pix = d->ho * d->wo;
    int64_t segoff[4096];
    if (seg_offsets(d, wpd, segoff)) return -1;
    if (n * pix * otot * d->nseg * d->seglen < 300000) nthreads = 1;
    int64_t bands = 1;
    if (n * groups < 2 * nthreads) bands = (2 * nthreads + n * groups - 1) / (n * groups);
    if (bands > pix) bands = pix;
    const int64_t items = n * groups * bands;
    int ovf = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    {
        int64_t cached = -1;
        uint8_t *sp = scratch + thread_id() * (hp * wpd * cg + 64);
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            const int64_t gb = it / bands, band = it % bands, b = gb / groups, g = gb % groups;
            if (cached != gb) {
                if (cached < 0) memset(sp, (int)d->zin, hp * wpd * cg);
                for (int64_t r = 0; r < d->h; r++) {
                    const uint8_t *src = x + (b * d->h + r) * d->w * ctot + g * cg;
                    uint8_t *dst = sp + ((r + d->ph) * wpd + d->pw) * cg;
                    for (int64_t col = 0; col < d->w; col++) memcpy(dst + col * cg, src + col * ctot, cg);
                }
                cached = gb;
            }
            const int64_t p0 = pix * band / bands, p1 = pix * (band + 1) / bands;
            const uint8_t *rows[MR_TILE];
            uint8_t *outs[MR_TILE];
            int64_t oh = p0 / d->wo, ow = p0 % d->wo;
            const int64_t chunk = d->wo <= MR_TILE ? MR_TILE / d->wo * d->wo : MR_TILE;
            for (int64_t p = p0; p < p1; p += chunk) {
                const int64_t m = p1 - p < chunk ? p1 - p : chunk;
                for (int64_t i = 0; i < m; i++) {
                    rows[i] = sp + (oh * d->sh * wpd + ow * d->sw) * cg;
                    outs[i] = y + (b * pix + p + i) * otot + g * og;
                    if (++ow == d->wo) { ow = 0; oh++; }
                }
                cnn_rows_block(ds[g], rows, outs, 0, m, segoff, &ovf);
            }
        }
    }
    return ovf;
}
