/* Exhaustive ADC search of a product-quantization index (compactnn.pq.index.PQIndex.search), outside the integer
   program: one pass over the base codes per block of 16 queries, the distances summed from the lookup tables and
   kept in a bounded max-heap per query, so no (base, queries) distance block is written. The torch path gathers m
   (base, 16) blocks and calls topk; this was 2.4x faiss's time per query.

   Tables of a block: (m * k, 16) float32, row j * k + c holds |q_j - codebook_j[c]|^2 for the block's 16 queries
   (columns), so a code fetches one 16-float row. The sum runs in subspace order (j = 0..m-1) in float32, as the
   torch path's adds. A base vector enters a query's heap when its distance is strictly below the heap's largest
   (the k-th best so far), so among equal distances the lower id is kept; the result is sorted by (distance, id). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "floatvec.h"

#define QB 16
CNN_FLOAT_VECTOR(vq, QB)

/* max-heap on (distance, id): the root is the worst kept result */
static inline int worse(float da, int64_t ia, float db, int64_t ib) { return da > db || (da == db && ia > ib); }

static void sift_down(float *hd, int64_t *hi, int64_t size, int64_t pos) {
    for (;;) {
        int64_t l = 2 * pos + 1, r = l + 1, top = pos;
        if (l < size && worse(hd[l], hi[l], hd[top], hi[top])) top = l;
        if (r < size && worse(hd[r], hi[r], hd[top], hi[top])) top = r;
        if (top == pos) return;
        float td = hd[pos];
        int64_t ti = hi[pos];
        hd[pos] = hd[top], hi[pos] = hi[top], hd[top] = td, hi[top] = ti;
        pos = top;
    }
}

static void push(float *hd, int64_t *hi, int64_t *size, int64_t cap, float d, int64_t id) {
    if (*size < cap) { /* sift up */
        int64_t pos = (*size)++;
        while (pos > 0) {
            int64_t parent = (pos - 1) / 2;
            if (!worse(d, id, hd[parent], hi[parent])) break;
            hd[pos] = hd[parent], hi[pos] = hi[parent];
            pos = parent;
        }
        hd[pos] = d, hi[pos] = id;
    } else {
        hd[0] = d, hi[0] = id;
        sift_down(hd, hi, cap, 0);
    }
}

/* codes: (n, m) uint8; tables: (nblocks, m * k, 16); nq queries (the last block may be partial); out: dist (nq, topk)
   float32 and ids (nq, topk) int64, nearest first. Returns 0, or 1 when out of memory. */
int cnn_adc_search(const uint8_t *codes, const float *tables, int64_t n, int64_t m, int64_t k, int64_t nq,
                   int64_t topk, float *dist, int64_t *ids, int nthreads) {
    const int64_t nblocks = (nq + QB - 1) / QB;
    int failed = 0;
    if (nblocks < 2) nthreads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1) reduction(| : failed)
    for (int64_t b = 0; b < nblocks; b++) {
        const float *t = tables + b * m * k * QB;
        const int64_t nb = nq - b * QB < QB ? nq - b * QB : QB;
        float *hd = malloc(sizeof(float) * QB * topk);
        int64_t *hi = malloc(sizeof(int64_t) * QB * topk);
        if (!hd || !hi) {
            free(hd), free(hi);
            failed = 1;
            continue;
        }
        int64_t size[QB] = {0};
        vq thr;
        for (int l = 0; l < QB; l++) thr[l] = l < nb ? INFINITY : -INFINITY; /* padding lanes never enter */
        for (int64_t i = 0; i < n; i++) {
            const uint8_t *c = codes + i * m;
            vq acc = vq_load(t + (int64_t)c[0] * QB);
            for (int64_t j = 1; j < m; j++) acc += vq_load(t + (j * k + c[j]) * QB);
            const vqi below = acc < thr;
            int any = 0;
            for (int l = 0; l < QB; l++) any |= below[l];
            if (!any) continue;
            for (int l = 0; l < nb; l++) {
                if (!below[l]) continue;
                push(hd + l * topk, hi + l * topk, &size[l], topk, acc[l], i);
                if (size[l] == topk) thr[l] = hd[l * topk];
            }
        }
        for (int l = 0; l < nb; l++) { /* heap sort: the worst goes last */
            float *d = hd + l * topk;
            int64_t *h = hi + l * topk, s = size[l];
            for (int64_t e = s - 1; e > 0; e--) {
                float td = d[0];
                int64_t ti = h[0];
                d[0] = d[e], h[0] = h[e], d[e] = td, h[e] = ti;
                sift_down(d, h, e, 0);
            }
            const int64_t q = b * QB + l;
            for (int64_t e = 0; e < topk; e++) {
                dist[q * topk + e] = e < s ? d[e] : INFINITY;
                ids[q * topk + e] = e < s ? h[e] : -1;
            }
        }
        free(hd), free(hi);
    }
    return failed;
}
