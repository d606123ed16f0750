/* Pooling, the quantized Add, concat and layout kernels of compactnn's integer-only engine (see kernels.c).
   Integer buffers only (uint8 codes, NHWC); no floating-point type. */

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Max pool on uint8 NHWC; out-of-bounds cells are skipped (the reference pads with 0, the uint8 minimum). */
void cnn_maxpool(const uint8_t *x, uint8_t *y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                 int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ho, int64_t wo, int nthreads) {
    if (n * ho * wo * c < 100000) nthreads = 1;
    if (ph == 0 && pw == 0 && w * c <= 65536) { /* no padding: row maxima first (contiguous), then columns */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
        for (int64_t r = 0; r < n * ho; r++) {
            const int64_t b = r / ho, oh = r % ho, wc = w * c;
            uint8_t t[65536];
            const uint8_t *src = x + (b * h + oh * sh) * wc;
            memcpy(t, src, wc);
            for (int64_t i = 1; i < kh; i++) {
                const uint8_t *p = src + i * wc;
                for (int64_t e = 0; e < wc; e++) t[e] = p[e] > t[e] ? p[e] : t[e];
            }
            uint8_t *o = y + (b * ho + oh) * wo * c;
            for (int64_t ow = 0; ow < wo; ow++) {
                const uint8_t *p = t + ow * sw * c;
                memcpy(o + ow * c, p, c);
                for (int64_t j = 1; j < kw; j++)
                    for (int64_t k = 0; k < c; k++) o[ow * c + k] = p[j * c + k] > o[ow * c + k] ? p[j * c + k] : o[ow * c + k];
            }
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t r = 0; r < n * ho; r++) {
        const int64_t b = r / ho, oh = r % ho;
        for (int64_t ow = 0; ow < wo; ow++) {
            uint8_t *o = y + ((b * ho + oh) * wo + ow) * c;
            memset(o, 0, c);
            for (int64_t i = 0; i < kh; i++) {
                const int64_t ih = oh * sh - ph + i;
                if (ih < 0 || ih >= h) continue;
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = ow * sw - pw + j;
                    if (iw < 0 || iw >= w) continue;
                    const uint8_t *p = x + ((b * h + ih) * w + iw) * c;
                    for (int64_t k = 0; k < c; k++) o[k] = p[k] > o[k] ? p[k] : o[k];
                }
            }
        }
    }
}

/* Average pool without padding (TFLite uint8 rounding: (sum + cnt/2) / cnt); kh = h, kw = w for global pooling. */
void cnn_avgpool(const uint8_t *x, uint8_t *y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                 int64_t sh, int64_t sw, int64_t ho, int64_t wo, int nthreads) {
    const int64_t cnt = kh * kw;
    if (n * ho * wo * c * cnt < 200000) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t r = 0; r < n * ho; r++) {
        const int64_t b = r / ho, oh = r % ho;
        int32_t acc[4096];
        for (int64_t ow = 0; ow < wo; ow++) {
            for (int64_t c0 = 0; c0 < c; c0 += 4096) {
                const int64_t cc = c - c0 < 4096 ? c - c0 : 4096;
                memset(acc, 0, cc * sizeof(int32_t));
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t j = 0; j < kw; j++) {
                        const uint8_t *p = x + ((b * h + oh * sh + i) * w + ow * sw + j) * c + c0;
                        for (int64_t k = 0; k < cc; k++) acc[k] += p[k];
                    }
                uint8_t *o = y + ((b * ho + oh) * wo + ow) * c + c0;
                for (int64_t k = 0; k < cc; k++) o[k] = (uint8_t)((acc[k] + cnt / 2) / cnt);
            }
        }
    }
}

/* TFLite uint8 Add through its 256x256 table of output codes (built by the caller with the reference
   definition, so exact by construction): y = table[a * 256 + b]. */
void cnn_add(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, const uint8_t *table, int nthreads) {
    if (count < 200000) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t i0 = 0; i0 < count; i0 += 8192) {
        const int64_t i1 = i0 + 8192 < count ? i0 + 8192 : count;
        for (int64_t i = i0; i < i1; i++) y[i] = table[((int64_t)a[i] << 8) | b[i]];
    }
}

/* y[r, off + k] = lut[x[r, k]] for r < rows, k < c (concat's per-input requantization into a channel slice). */
void cnn_lut_copy(const uint8_t *x, uint8_t *y, int64_t rows, int64_t c, int64_t ystride, int64_t off,
                  const uint8_t *lut) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < c; k++) y[r * ystride + off + k] = lut[x[r * c + k]];
}

/* NHWC -> NCHW per image (flatten in PyTorch order, and output conversion). */
void cnn_nhwc_to_nchw(const uint8_t *x, uint8_t *y, int64_t n, int64_t hw, int64_t c) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++)
            for (int64_t k = 0; k < c; k++) y[(b * c + k) * hw + p] = x[(b * hw + p) * c + k];
}

void cnn_nchw_to_nhwc(const uint8_t *x, uint8_t *y, int64_t n, int64_t hw, int64_t c) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t p = 0; p < hw; p++) y[(b * hw + p) * c + k] = x[(b * c + k) * hw + p];
}

/* Data movement per sample (permute, reshape, slice, pad, in the arena's layouts): y[b, i] = x[b, idx[i]], or
   fill where idx[i] < 0. The caller builds idx and checks every entry is in [-1, xsize). */
void cnn_gather(const uint8_t *x, uint8_t *y, int64_t n, int64_t xsize, int64_t ysize, const int32_t *idx,
                int64_t fill, int nthreads) {
    if (n * ysize < 200000) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t b = 0; b < n; b++) {
        const uint8_t *xb = x + b * xsize;
        uint8_t *yb = y + b * ysize;
        for (int64_t i = 0; i < ysize; i++) yb[i] = idx[i] >= 0 ? xb[idx[i]] : (uint8_t)fill;
    }
}

/* A broadcasting binary op through its 256x256 table of output codes (built by the caller with the reference):
   y[b, i] = table[a[b, ia[i]] * 256 + c[b, ic[i]]]; the caller checks ia < asize and ic < csize. */
void cnn_gather2_table(const uint8_t *a, const uint8_t *c, uint8_t *y, int64_t n, int64_t asize, int64_t csize,
                       int64_t ysize, const int32_t *ia, const int32_t *ic, const uint8_t *table, int nthreads) {
    if (n * ysize < 200000) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t b = 0; b < n; b++) {
        const uint8_t *ab = a + b * asize, *cb = c + b * csize;
        uint8_t *yb = y + b * ysize;
        for (int64_t i = 0; i < ysize; i++) yb[i] = table[((int64_t)ab[ia[i]] << 8) | cb[ic[i]]];
    }
}
