/* The float nearest-centroid search of product quantization's k-means (compactnn.pq.kmeans.assign), outside the
   integer program. torch has no fused "distances then argmin": baddbmm writes a (rows, k) block and min reads it
   back, and that min with indices was two thirds of a PQ training's time. Here each point's k distances stay in a
   stack buffer.

   Same arithmetic as the torch path: d_j = |c_j|^2 - 2 x.c_j in float32 (the products summed in dimension order),
   the lowest d_j wins, ties to the lower index; the squared distance is max(0, d_j + |x|^2). Float rounding can
   differ from the BLAS's summation order, so a near-tie may resolve the other way (the distances agree to float
   rounding). Written with GCC/Clang vector extensions, 16 floats wide with AVX-512, else 8 (one AVX2 register, or
   scalar code): per point and per 16 (8) centroids the d products accumulate in a register, then a compare and blend
   keep the running minimum and its index per lane. */

#include "floatvec.h"

#ifdef __AVX512F__ /* 32 registers of 16 floats: 8 points x (sum, best, index) stay in registers */
#define LANES 16
#define PTS 8
#else /* AVX2 (16 registers of 8 floats) and others: narrower, fewer points, or the accumulators spill */
#define LANES 8
#define PTS 4
#endif
CNN_FLOAT_VECTOR(vf, LANES)

/* x: (g, n, d) float32; ct: (g, d, kp) the centroids transposed, kp = k rounded up to 16, padded columns 0;
   cn: (g, kp) |c_j|^2, +inf on the padding; labels: (g, n) int64; dist: (g, n) float32. Returns 0, or 1 when kp is
   not a multiple of 16 (the caller then uses torch). */
int cnn_l2_argmin(const float *x, const float *ct, const float *cn, int64_t g, int64_t n, int64_t d, int64_t k,
                  int64_t kp, int64_t *labels, float *dist, int nthreads) {
    if (kp % 16 || kp < k) return 1;
    const int64_t block = 64;
    const int64_t nblocks = (n + block - 1) / block;
    if (g * n * d * k < 2000000) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t job = 0; job < g * nblocks; job++) {
        const int64_t gi = job / nblocks, start = (job % nblocks) * block;
        const int64_t stop = start + block < n ? start + block : n;
        const float *c = ct + gi * d * kp, *norms = cn + gi * kp;
        vfi lane;
        for (int l = 0; l < LANES; l++) lane[l] = l;
        /* PTS points at a time share each centroid load and give the FMAs independent chains; a short last group
           repeats its last point (computed, not stored) */
        for (int64_t p0 = start; p0 < stop; p0 += PTS) {
            const float *xp[PTS];
            for (int q = 0; q < PTS; q++) xp[q] = x + (gi * n + (p0 + q < stop ? p0 + q : stop - 1)) * d;
            vf bv[PTS];
            vfi bi[PTS];
            for (int64_t j0 = 0; j0 < kp; j0 += LANES) {
                vf a[PTS] = {{0}};
                for (int64_t t = 0; t < d; t++) {
                    const vf cv = vf_load(c + t * kp + j0);
                    for (int q = 0; q < PTS; q++) a[q] += xp[q][t] * cv;
                }
                const vf nv = vf_load(norms + j0);
                for (int q = 0; q < PTS; q++) {
                    const vf v = nv - 2.0f * a[q];
                    if (j0 == 0) {
                        bv[q] = v;
                        bi[q] = lane;
                        continue;
                    }
                    const vfi lt = v < bv[q]; /* -1 where lower: a later index wins only when strictly lower */
                    bv[q] = (vf)(((vfi)v & lt) | ((vfi)bv[q] & ~lt));
                    bi[q] = ((lane + (int32_t)j0) & lt) | (bi[q] & ~lt);
                }
            }
            for (int q = 0; q < PTS && p0 + q < stop; q++) {
                float best = bv[q][0], xx = 0.0f;
                int32_t arg = bi[q][0];
                for (int l = 1; l < LANES; l++)
                    if (bv[q][l] < best || (bv[q][l] == best && bi[q][l] < arg)) {
                        best = bv[q][l];
                        arg = bi[q][l];
                    }
                for (int64_t t = 0; t < d; t++) xx += xp[q][t] * xp[q][t];
                const float r = best + xx;
                labels[gi * n + p0 + q] = arg;
                dist[gi * n + p0 + q] = r > 0.0f ? r : 0.0f;
            }
        }
    }
    return 0;
}
