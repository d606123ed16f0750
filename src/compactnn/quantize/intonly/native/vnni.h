/* AVX-512 helpers of the convolution epilogue (included by kernels.c when CNN_VNNI): the requantization of
   kernels.h on 16 channels (the definition in int64 lanes, and the folded form), and the fused Add. Integer types
   only. */

#ifndef CNN_VNNI_H
#define CNN_VNNI_H
#include "kernels.h"

/* The definition in int64 lanes (any shifts; an int32 overflow of acc + bias sets *ovf) -> 16 codes as int32. */
static inline __m512i requant16_wide(__m512i acc, const Requant *r, int64_t c0, __mmask8 *ovf) {
    const __m512i mn = _mm512_set1_epi64(I32MIN), mx = _mm512_set1_epi64(I32MAX);
    const __m512i rnd = _mm512_set1_epi64((int64_t)1 << 30);
    __m128i out[2];
    for (int hlf = 0; hlf < 2; hlf++) {
        int64_t c = c0 + 8 * hlf;
        __m256i a32 = hlf ? _mm512_extracti64x4_epi64(acc, 1) : _mm512_castsi512_si256(acc);
        __m512i v = _mm512_add_epi64(_mm512_cvtepi32_epi64(a32), _mm512_loadu_si512(r->bias + c));
        *ovf |= _mm512_cmpgt_epi64_mask(v, mx) | _mm512_cmplt_epi64_mask(v, mn);
        v = _mm512_min_epi64(_mm512_max_epi64(v, mn), mx);
        __m512i x = _mm512_sllv_epi64(v, _mm512_loadu_si512(r->left + c));
        x = _mm512_min_epi64(_mm512_max_epi64(x, mn), mx);
        __m512i p = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, _mm512_loadu_si512(r->m0 + c)), rnd), 31);
        __m512i ng = _mm512_and_si512(_mm512_srai_epi64(p, 63), _mm512_loadu_si512(r->neg + c));
        p = _mm512_sub_epi64(_mm512_add_epi64(p, _mm512_loadu_si512(r->half + c)), ng);
        p = _mm512_srav_epi64(p, _mm512_loadu_si512(r->right + c));
        p = _mm512_add_epi64(p, _mm512_set1_epi64(r->zp));
        p = _mm512_min_epi64(_mm512_max_epi64(p, _mm512_set1_epi64(r->qmin)), _mm512_set1_epi64(r->qmax));
        out[hlf] = _mm512_cvtepi64_epi8(p);
    }
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(out[0], out[1]));
}

/* The folded form of one block of 16 channels, its constants loaded once per tile: even channels in the low dwords
   of int64 lanes, odd ones shifted by e - 1 so that their results land in the high dwords; one blend joins them. */
typedef struct { __m512i me, mo, ce, co, se, so, lo, hi; } RqVec;

static inline RqVec rq_vec(const Requant *r, int64_t blk) {
    const int64_t *m = r->fm + blk * 16, *c = r->fc + blk * 16, *s = r->fs + blk * 16;
    return (RqVec){_mm512_loadu_si512(m), _mm512_loadu_si512(m + 8), _mm512_loadu_si512(c),
                   _mm512_loadu_si512(c + 8), _mm512_loadu_si512(s), _mm512_loadu_si512(s + 8),
                   _mm512_set1_epi32((int32_t)r->qmin), _mm512_set1_epi32((int32_t)r->qmax)};
}

/* acc (bias included) -> 16 codes as int32; NEG: apply the [x*M0 < 0] term. */
static inline __m512i rq_apply(const int NEG, __m512i acc, const RqVec *v) {
    const __m512i ae = _mm512_mul_epi32(acc, v->me), ao = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), v->mo);
    __m512i te = _mm512_add_epi64(ae, v->ce), to = _mm512_add_epi64(ao, v->co);
    if (NEG) {
        const __m512i n = _mm512_set1_epi64((int64_t)1 << 31);
        te = _mm512_mask_sub_epi64(te, _mm512_movepi64_mask(ae), te, n);
        to = _mm512_mask_sub_epi64(to, _mm512_movepi64_mask(ao), to, n);
    }
    const __m512i y = _mm512_mask_blend_epi32(0xAAAA, _mm512_srav_epi64(te, v->se), _mm512_srav_epi64(to, v->so));
    return _mm512_min_epi32(_mm512_max_epi32(y, v->lo), v->hi);
}

static inline __m512i requant16_fast(__m512i acc, const Requant *r, int64_t blk) {
    const RqVec v = rq_vec(r, blk);
    return r->fneg ? rq_apply(1, acc, &v) : rq_apply(0, acc, &v);
}

static inline __m512i requant16(__m512i acc, const Requant *r, int64_t blk, __mmask8 *ovf) {
    return r->fast ? requant16_fast(acc, r, blk) : requant16_wide(acc, r, blk * 16, ovf);
}

/* The fused Add's folded form, per-tensor constants broadcast once per tile. */
typedef struct {
    __m512i zs, zr, ms, cs, ns, mr, cr, nr, my, cy, ny, as, ar, lo, hi;
    __m128i ls, ss, sr, sye, syo;
    int lin_s, lin_r, neg_s, neg_r, neg_y;
    __m512i mhs, mls, k0s, kns, mhr, mlr, k0r, knr;
    __m128i shs, shr;
    int split_s, split_r;
} AddVec;

static inline AddVec add_vec(const AddFuse *f) {
    return (AddVec){_mm512_set1_epi32((int32_t)f->zs), _mm512_set1_epi32((int32_t)f->zr), _mm512_set1_epi64(f->ms),
                    _mm512_set1_epi64(f->cs), _mm512_set1_epi64(f->ns), _mm512_set1_epi64(f->mr),
                    _mm512_set1_epi64(f->cr), _mm512_set1_epi64(f->nr), _mm512_set1_epi64(f->my),
                    _mm512_set1_epi64(f->cy), _mm512_set1_epi64(f->ny), _mm512_set1_epi32((int32_t)f->alpha_s),
                    _mm512_set1_epi32((int32_t)f->alpha_r), _mm512_set1_epi32((int32_t)f->qmin),
                    _mm512_set1_epi32((int32_t)f->qmax), _mm_cvtsi64_si128(f->ls), _mm_cvtsi64_si128(f->ss),
                    _mm_cvtsi64_si128(f->sr), _mm_cvtsi64_si128(f->sy), _mm_cvtsi64_si128(f->sy - 32),
                    f->alpha_s != 0, f->alpha_r != 0, f->ns != 0, f->nr != 0, f->ny != 0,
                    _mm512_set1_epi32((int32_t)f->mhs), _mm512_set1_epi32((int32_t)f->mls),
                    _mm512_set1_epi32((int32_t)f->k0s), _mm512_set1_epi32((int32_t)f->kns),
                    _mm512_set1_epi32((int32_t)f->mhr), _mm512_set1_epi32((int32_t)f->mlr),
                    _mm512_set1_epi32((int32_t)f->k0r), _mm512_set1_epi32((int32_t)f->knr),
                    _mm_cvtsi64_si128(f->shs), _mm_cvtsi64_si128(f->shr), f->shs != 0, f->shr != 0};
}

/* (t + c - [t < 0] * n) for the int64 products t of both halves (neg = 0: no term). */
static inline void fold_pair(__m512i ae, __m512i ao, __m512i c, int neg, __m512i n, __m512i *te, __m512i *to) {
    *te = _mm512_add_epi64(ae, c);
    *to = _mm512_add_epi64(ao, c);
    if (neg) {
        *te = _mm512_mask_sub_epi64(*te, _mm512_movepi64_mask(ae), *te, n);
        *to = _mm512_mask_sub_epi64(*to, _mm512_movepi64_mask(ao), *to, n);
    }
}

/* One input's rescaled values, the even and odd elements in the low dwords of int64 lanes. */
static inline void rescale(__m512i q, __m512i z, int lin, __m512i alpha, __m128i ls, __m512i m, __m512i c, int neg,
                           __m512i n, __m128i s, int split, __m512i mh, __m512i ml, __m512i k0, __m512i kn,
                           __m128i sh, __m512i *ev, __m512i *od) {
    const __m512i d = _mm512_sub_epi32(q, z);
    if (lin) {  /* exactly linear: one multiply */
        *ev = _mm512_mullo_epi32(d, alpha);
        *od = _mm512_srli_epi64(*ev, 32);
        return;
    }
    if (split) {  /* d*Mh + ((d*Ml + K0 - [d < 0]*Kn) >> S), all in int32 (program.py checks it on all codes) */
        __m512i t = _mm512_add_epi32(_mm512_mullo_epi32(d, ml), k0);
        t = _mm512_mask_sub_epi32(t, _mm512_movepi32_mask(d), t, kn);
        *ev = _mm512_add_epi32(_mm512_mullo_epi32(d, mh), _mm512_sra_epi32(t, sh));
        *od = _mm512_srli_epi64(*ev, 32);
        return;
    }
    const __m512i x = _mm512_sll_epi32(d, ls);
    fold_pair(_mm512_mul_epi32(x, m), _mm512_mul_epi32(_mm512_srli_epi64(x, 32), m), c, neg, n, ev, od);
    *ev = _mm512_sra_epi64(*ev, s);
    *od = _mm512_sra_epi64(*od, s);
}

/* own: the conv's 16 codes (int32 lanes); res: 16 residual codes -> the Add's 16 codes (int32 lanes). The sum of
   the rescaled inputs fits int32 (checked with the table), so adding low dwords is exact. */
static inline __m512i add_apply(__m512i own, const uint8_t *res, const AddVec *v) {
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)res));
    __m512i se, so, re, ro, te, to;
    rescale(own, v->zs, v->lin_s, v->as, v->ls, v->ms, v->cs, v->neg_s, v->ns, v->ss, v->split_s, v->mhs, v->mls,
            v->k0s, v->kns, v->shs, &se, &so);
    rescale(q, v->zr, v->lin_r, v->ar, v->ls, v->mr, v->cr, v->neg_r, v->nr, v->sr, v->split_r, v->mhr, v->mlr,
            v->k0r, v->knr, v->shr, &re, &ro);
    se = _mm512_add_epi32(se, re);
    so = _mm512_add_epi32(so, ro);
    fold_pair(_mm512_mul_epi32(se, v->my), _mm512_mul_epi32(so, v->my), v->cy, v->neg_y, v->ny, &te, &to);
    const __m512i y = _mm512_mask_blend_epi32(0xAAAA, _mm512_sra_epi64(te, v->sye), _mm512_sra_epi64(to, v->syo));
    return _mm512_min_epi32(_mm512_max_epi32(y, v->lo), v->hi);
}

#endif
