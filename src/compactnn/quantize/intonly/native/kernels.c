/* Micro-kernels of compactnn's integer-only convolution (Jacob et al., CVPR 2018; TFLite uint8 arithmetic): a tile
   of output pixels x blocks of 16 output channels, with the requantization (kernels.h) and, when the conv carries
   one, the fused residual Add in its epilogue. The drivers (work split, padding) are in conv.c. Integer buffers
   only: uint8 activation codes (NHWC), int8 weights, int32/int64 constants; no floating-point type.

   Convolution = direct "segment GEMM": an output pixel's receptive field is kh segments of kw*C contiguous bytes
   (NHWC, dilation 1 along W) or kh*kw segments of C bytes; each segment is read in 4-byte groups (its length is
   padded to a multiple of 4 with zero weights, so the few bytes read past a segment are multiplied by 0).
   Accumulators: acc = sum q*w (u8 x s8 -> s32, exact while K*255*127 < 2^31, checked by the caller); the input
   zero point is folded into the int64 per-channel bias: bias = b - Z_in * sum(w). With the folded requantization
   the accumulators start at the bias (it and every partial sum provably stay inside int32). */

#include "kernels.h"

int cnn_simd(void) { return CNN_VNNI ? 2 : (CNN_AVX2 ? 1 : 0); }

int cnn_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#if CNN_VNNI
#include "vnni.h"

/* Writes the codes of channels [16 blk, 16 blk + 16) of one pixel (after the fused Add, if any). */
static inline void emit16(const Conv *d, __m512i codes, int64_t blk, uint8_t *out, const uint8_t *res) {
    const int64_t c0 = blk * 16, rem = d->o - c0;
    if (d->add && d->add->fast) {
        const AddVec v = add_vec(d->add);
        codes = add_apply(codes, res + c0, &v);
    } else if (d->add) {
        uint8_t t[16];
        _mm_storeu_si128((__m128i *)t, _mm512_cvtepi32_epi8(codes));
        for (int l = 0; l < 16 && l < rem; l++) t[l] = add1(d->add, t[l], res[c0 + l]);
        codes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)t));
    }
    const __m128i y = _mm512_cvtepi32_epi8(codes);
    if (rem >= 16) _mm_storeu_si128((__m128i *)(out + c0), y);
    else _mm_mask_storeu_epi8(out + c0, (__mmask16)((1u << rem) - 1), y);
}

/* The accumulators of MR pixels (rows[i]: first byte of pixel i's receptive field) x NB channel blocks from b0. */
#define ACCUMULATE(MR, NB, ACC)                                                                                     \
    for (int j = 0; j < NB; j++) {                                                                                  \
        const __m512i init = d->rq.fast ? _mm512_loadu_si512(d->rq.b32 + (b0 + j) * 16) : _mm512_setzero_si512(); \
        for (int i = 0; i < MR; i++) ACC[i][j] = init;                                                              \
    }                                                                                                               \
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4;                                                \
    const int8_t *w = d->wp + b0 * k4 * 64;                                                                         \
    for (int64_t s = 0; s < d->nseg; s++) {                                                                         \
        const int64_t so = segoff[s];                                                                               \
        for (int64_t t = 0; t < sl4; t++) {                                                                         \
            const int64_t kk = s * sl4 + t;                                                                         \
            __m512i wv[4];                                                                                          \
            for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_si512(w + (j * k4 + kk) * 64);                        \
            for (int i = 0; i < MR; i++) {                                                                          \
                int32_t av;                                                                                         \
                memcpy(&av, rows[i] + so + 4 * t, 4);                                                               \
                const __m512i a = _mm512_set1_epi32(av);                                                            \
                for (int j = 0; j < NB; j++) ACC[i][j] = _mm512_dpbusd_epi32(ACC[i][j], a, wv[j]);                  \
            }                                                                                                       \
        }                                                                                                           \
    }

/* The epilogue of a tile, folded form: ADD with the fused Add, NEG with the [x*M0 < 0] term. */
static inline __attribute__((always_inline)) void epilogue_fast(const int NEG, const int ADD, const Conv *d,
                                                                const __m512i *acc, int MR, int NB, int64_t b0,
                                                                uint8_t *const *outs, const uint8_t *const *ress) {
    AddVec av;
    if (ADD) av = add_vec(d->add);
    for (int j = 0; j < NB; j++) {
        const RqVec v = rq_vec(&d->rq, b0 + j);
        for (int i = 0; i < MR; i++) {
            __m512i y = rq_apply(NEG, acc[i * 4 + j], &v);
            if (ADD) y = add_apply(y, ress[i] + (b0 + j) * 16, &av);
            _mm_storeu_si128((__m128i *)(outs[i] + (b0 + j) * 16), _mm512_cvtepi32_epi8(y));
        }
    }
}

/* The epilogue of a tile: requantize (and Add) the accumulators acc[i * 4 + j] of MR pixels x NB blocks from b0.
   Out of line and specialized, so that the accumulation loop keeps its registers and the constants are loaded
   once per tile (inlined and generic, the 16-channel convs ran ~30% slower). */
static __attribute__((noinline)) void epilogue(const Conv *d, const __m512i *acc, int MR, int NB, int64_t b0,
                                               uint8_t *const *outs, const uint8_t *const *ress, __mmask8 *ovf) {
    const int add = d->add != 0;
    if (d->raw) {  /* the accumulators themselves (the caller requantizes) */
        for (int j = 0; j < NB; j++) {
            const int64_t rem = d->o - (b0 + j) * 16;
            const __mmask16 mk = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
            for (int i = 0; i < MR; i++) _mm512_mask_storeu_epi32((int32_t *)outs[i] + (b0 + j) * 16, mk, acc[i * 4 + j]);
        }
        return;
    }
    if (d->leaky) {
        for (int j = 0; j < NB; j++) {
            const int64_t blk = b0 + j;
            if (d->rq.fast) {  /* both sides folded (the caller sets rq.fast only then); acc includes the bias */
                const RqVec vp = rq_vec(&d->rq, blk), vn = rq_vec(&d->rqn, blk);
                for (int i = 0; i < MR; i++) {
                    const __m512i a = acc[i * 4 + j];
                    const __m512i y = _mm512_mask_blend_epi32(_mm512_movepi32_mask(a), rq_apply(1, a, &vp),
                                                              rq_apply(1, a, &vn));
                    emit16(d, y, blk, outs[i], 0);
                }
            } else {  /* the definition in int64 lanes, both sides, chosen by the sign of acc + bias */
                const __m512i b0v = _mm512_loadu_si512(d->rq.bias + blk * 16);
                const __m512i b1v = _mm512_loadu_si512(d->rq.bias + blk * 16 + 8);
                const __m512i zero = _mm512_setzero_si512();
                for (int i = 0; i < MR; i++) {
                    const __m512i a = acc[i * 4 + j];
                    const __m512i yp = requant16_wide(a, &d->rq, blk * 16, ovf);
                    const __m512i yn = requant16_wide(a, &d->rqn, blk * 16, ovf);
                    const __mmask8 m0 = _mm512_cmplt_epi64_mask(
                        _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)), b0v), zero);
                    const __mmask8 m1 = _mm512_cmplt_epi64_mask(
                        _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)), b1v), zero);
                    emit16(d, _mm512_mask_blend_epi32((__mmask16)(m0 | ((unsigned)m1 << 8)), yp, yn), blk, outs[i], 0);
                }
            }
        }
        return;
    }
    if (d->rq.fast && (b0 + NB) * 16 <= d->o && (!add || d->add->fast)) {
        if (d->rq.fneg) {
            if (add) epilogue_fast(1, 1, d, acc, MR, NB, b0, outs, ress);
            else epilogue_fast(1, 0, d, acc, MR, NB, b0, outs, ress);
        } else {
            if (add) epilogue_fast(0, 1, d, acc, MR, NB, b0, outs, ress);
            else epilogue_fast(0, 0, d, acc, MR, NB, b0, outs, ress);
        }
        return;
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NB; j++)
            emit16(d, requant16(acc[i * 4 + j], &d->rq, b0 + j, ovf), b0 + j, outs[i], ress ? ress[i] : 0);
}

static inline __attribute__((always_inline)) void kern(const int MR, const int NB, const uint8_t *const *rows,
                                                       uint8_t *const *outs, const uint8_t *const *ress,
                                                       const Conv *d, int64_t b0, const int64_t *segoff,
                                                       __mmask8 *ovf) {
    __m512i acc[12][4];
    ACCUMULATE(MR, NB, acc)
    epilogue(d, &acc[0][0], MR, NB, b0, outs, ress, ovf);
}

/* 16 output channels, a short reduction (<= 16 bytes, e.g. a 3x3 conv on one channel), folded requantization, tiles
   of 12 pixels: the epilogue of each tile runs in pieces between the segments of the next tile's accumulation, so
   that it overlaps the dot products (~25% faster there; with longer reductions the extra live state spilled the
   row pointers and it was slower). */
static inline __attribute__((always_inline)) void pipe12(const int NEG, const int ADD, const Conv *d,
                                                         const uint8_t *const *rows, uint8_t *const *outs,
                                                         const uint8_t *const *ress, int64_t tiles,
                                                         const int64_t *segoff) {
    __m512i buf[12];
    const RqVec v = rq_vec(&d->rq, 0);
    AddVec av;
    if (ADD) av = add_vec(d->add);
    const int64_t nseg = d->nseg, sl4 = d->seglen / 4;
    const __m512i init = _mm512_loadu_si512(d->rq.b32);
    for (int64_t T = 0; T <= tiles; T++) {
        const uint8_t *const *r = rows + 12 * T;
        __m512i acc[12];
        for (int i = 0; i < 12; i++) acc[i] = init;
        for (int64_t s = 0; s < nseg; s++) {
            if (T < tiles) {
                const int8_t *w = d->wp + s * sl4 * 64;
                const int64_t so = segoff[s];
                for (int64_t t = 0; t < sl4; t++) {
                    const __m512i wv = _mm512_loadu_si512(w + t * 64);
                    for (int i = 0; i < 12; i++) {
                        int32_t a;
                        memcpy(&a, r[i] + so + 4 * t, 4);
                        acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32(a), wv);
                    }
                }
            }
            if (T > 0) {
                const int64_t p = 12 * (T - 1);
                for (int64_t i = 12 * s / nseg; i < 12 * (s + 1) / nseg; i++) {
                    __m512i y = rq_apply(NEG, buf[i], &v);
                    if (ADD) y = add_apply(y, ress[p + i], &av);
                    _mm_storeu_si128((__m128i *)outs[p + i], _mm512_cvtepi32_epi8(y));
                }
            }
        }
        for (int i = 0; i < 12; i++) buf[i] = acc[i];
    }
}

/* 16 input bytes per pixel step (16 channels, stride 1) -> 16 output channels, folded requantization: tiles of 14
   pixels of one output row, addressed from one pointer with constant offsets (so that no row pointer spills), the
   epilogue of each tile run in pieces between the segments of the next tile's accumulation. */
#define PT 14
static inline __attribute__((always_inline)) void pipe_row16(const int NEG, const int ADD, const Conv *d,
                                                             const uint8_t *const *rows, uint8_t *const *outs,
                                                             const uint8_t *const *ress, const int64_t *starts,
                                                             int64_t nt, const int64_t *segoff) {
    __m512i buf[PT];
    const RqVec v = rq_vec(&d->rq, 0);
    AddVec av;
    if (ADD) av = add_vec(d->add);
    const int64_t nseg = d->nseg, sl4 = d->seglen / 4;
    const __m512i init = _mm512_loadu_si512(d->rq.b32);
    for (int64_t T = 0; T <= nt; T++) {
        __m512i acc[PT];
        for (int i = 0; i < PT; i++) acc[i] = init;
        for (int64_t s = 0; s < nseg; s++) {
            if (T < nt) {
                const uint8_t *x = rows[starts[T]] + segoff[s];
                const int8_t *w = d->wp + s * sl4 * 64;
                for (int64_t t = 0; t < sl4; t++) {
                    const __m512i wv = _mm512_loadu_si512(w + t * 64);
                    for (int i = 0; i < PT; i++) {
                        int32_t a;
                        memcpy(&a, x + 4 * t + 16 * i, 4);
                        acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32(a), wv);
                    }
                }
            }
            if (T > 0) {
                uint8_t *o = outs[starts[T - 1]];
                const uint8_t *r = ADD ? ress[starts[T - 1]] : 0;
                for (int64_t i = PT * s / nseg; i < PT * (s + 1) / nseg; i++) {
                    __m512i y = rq_apply(NEG, buf[i], &v);
                    if (ADD) y = add_apply(y, r + 16 * i, &av);
                    _mm_storeu_si128((__m128i *)(o + 16 * i), _mm512_cvtepi32_epi8(y));
                }
            }
        }
        for (int i = 0; i < PT; i++) buf[i] = acc[i];
    }
}

/* The pixels of rows/outs/ress that form pipe_row16 tiles (their indices in starts), the others done one by one. */
static int64_t row16_tiles(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs,
                           const uint8_t *const *ress, int64_t m, const int64_t *segoff, int64_t *starts,
                           __mmask8 *ov) {
    int64_t nt = 0;
    for (int64_t i = 0; i < m;) {
        if (i + PT <= m && rows[i + PT - 1] == rows[i] + (PT - 1) * 16 && outs[i + PT - 1] == outs[i] + (PT - 1) * 16
                && (!ress || ress[i + PT - 1] == ress[i] + (PT - 1) * 16)) {
            starts[nt++] = i;
            i += PT;
        } else {
            kern(1, 1, rows + i, outs + i, ress ? ress + i : 0, d, 0, segoff, ov);
            i++;
        }
    }
    return nt;
}

void cnn_rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, const uint8_t *const *ress,
                    int64_t m, const int64_t *segoff, int *ovf) {
    __mmask8 ov = 0;
    const int64_t nb = (d->o + 15) / 16;
    int64_t done = 0;
    if (!d->leaky && !d->raw && d->o == 16 && d->c == 16 && d->sw == 1 && d->nseg * d->seglen > 16 && d->rq.fast
            && (!d->add || d->add->fast) && m >= PT && m <= 4096) {
        int64_t starts[4096 / PT + 1];
        const int64_t nt = row16_tiles(d, rows, outs, ress, m, segoff, starts, &ov);
        if (d->rq.fneg) {
            if (d->add) pipe_row16(1, 1, d, rows, outs, ress, starts, nt, segoff);
            else pipe_row16(1, 0, d, rows, outs, ress, starts, nt, segoff);
        } else {
            if (d->add) pipe_row16(0, 1, d, rows, outs, ress, starts, nt, segoff);
            else pipe_row16(0, 0, d, rows, outs, ress, starts, nt, segoff);
        }
        done = m;
    } else if (!d->leaky && !d->raw && d->o == 16 && d->nseg * d->seglen <= 16 && d->rq.fast && (!d->add || d->add->fast) && m >= 24) {
        const int64_t tiles = m / 12;
        if (d->rq.fneg) {
            if (d->add) pipe12(1, 1, d, rows, outs, ress, tiles, segoff);
            else pipe12(1, 0, d, rows, outs, ress, tiles, segoff);
        } else {
            if (d->add) pipe12(0, 1, d, rows, outs, ress, tiles, segoff);
            else pipe12(0, 0, d, rows, outs, ress, tiles, segoff);
        }
        done = tiles * 12;
    }
    for (int64_t b0 = 0; b0 < nb;) {
        const int64_t NB = nb - b0 >= 4 ? 4 : nb - b0;
        int64_t i = done;
#define KERN_ROWS(MRV, NBV) \
    for (; m - i >= MRV; i += MRV) kern(MRV, NBV, rows + i, outs + i, ress ? ress + i : 0, d, b0, segoff, &ov)
        switch (NB) {  /* <= 24 accumulators in registers */
        case 1: KERN_ROWS(12, 1); KERN_ROWS(4, 1); KERN_ROWS(1, 1); break;
        case 2: KERN_ROWS(12, 2); KERN_ROWS(4, 2); KERN_ROWS(1, 2); break;
        case 3: KERN_ROWS(6, 3); KERN_ROWS(2, 3); KERN_ROWS(1, 3); break;
        default: KERN_ROWS(6, 4); KERN_ROWS(2, 4); KERN_ROWS(1, 4); break;
        }
#undef KERN_ROWS
        b0 += NB;
    }
    if (ov) *ovf = 1;
}

/* 2x2 max pool fused before requantization (requantization is non-decreasing, so max then requantize equals
   requantize then max): rows[0..3] are one pooled pixel's window, out is its output row. */
static inline __attribute__((always_inline)) void kern_pool4(const int NB, const uint8_t *const *rows, uint8_t *out,
                                                             const Conv *d, int64_t b0, const int64_t *segoff,
                                                             __mmask8 *ovf) {
    __m512i acc[4][4];
    ACCUMULATE(4, NB, acc)
    for (int j = 0; j < NB; j++) {
        __m512i m = _mm512_max_epi32(_mm512_max_epi32(acc[0][j], acc[1][j]), _mm512_max_epi32(acc[2][j], acc[3][j]));
        emit16(d, requant16(m, &d->rq, b0 + j, ovf), b0 + j, out, 0);
    }
}

void cnn_pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf) {
    __mmask8 ov = 0;
    const int64_t nb = (d->o + 15) / 16;
    for (int64_t b0 = 0; b0 < nb;) {
        int64_t left = nb - b0;
        if (left >= 4) { kern_pool4(4, rows, out, d, b0, segoff, &ov); b0 += 4; }
        else if (left == 3) { kern_pool4(3, rows, out, d, b0, segoff, &ov); b0 += 3; }
        else if (left == 2) { kern_pool4(2, rows, out, d, b0, segoff, &ov); b0 += 2; }
        else { kern_pool4(1, rows, out, d, b0, segoff, &ov); b0 += 1; }
    }
    if (ov) *ovf = 1;
}
#elif CNN_AVX2
/* AVX2 path (CPUs without AVX-512 VNNI): the dot products with vpmaddwd on 16-bit values. vpmaddubsw (u8 x s8 pairs
   summed into saturating int16) is not used: 255*127*2 = 64770 overflows int16, so it would saturate where the
   reference does not. Each group of 4 input bytes is broadcast to every dword (one load); its even bytes (0, 2) and
   odd bytes (1, 3) as zero-extended int16 pairs (one and, one shift), times the channels' even / odd weight pairs
   (sign-extended int16, packed so by program.py: Conv.wp16), summed in pairs into int32 by vpmaddwd, give each
   channel's dword: no shuffles, and the accumulators are in channel order. The products are exact (|a*w| <= 255*128,
   and vpmaddwd's one saturating case, -32768 * -32768 twice, cannot occur), and the int32 sums are exact while
   K*255*127 < 2^31 (checked by the caller). Requantization: the folded form on 8 channels (below) where it applies,
   else the definition (requant1) and the Add's table, as the portable path. */

/* int32 accumulators of MR (<= 4) pixels x the 16 channels of block b, in channel order. U7: 8-bit products, for
   a conv whose input codes are all <= 127 (Conv.u7: 7-bit activations): vpmaddubsw of the broadcast group with the
   packed int8 weights (Conv.wp, 8 channels x 4 bytes a register) gives each channel's two pair sums as int16, exact
   since |a0*w0 + a1*w1| <= 127*128*2 < 2^15, and vpmaddwd with ones adds them into the channel's dword: 3
   instructions for 32 products, not 4. */
static inline __attribute__((always_inline)) void acc16_avx2(const int U7, const int MR, const Conv *d,
                                                              const uint8_t *const *rows, int64_t b,
                                                              const int64_t *segoff, int32_t out[4][16]) {
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4;
    const int8_t *w8 = U7 ? d->wp + b * k4 * 64 : 0;
    const int16_t *w16 = U7 ? 0 : d->wp16 + b * k4 * 64;
    const __m256i low = _mm256_set1_epi16(0x00FF), ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int64_t s = 0; s < d->nseg; s++) {
        const int64_t so = segoff[s];
        for (int64_t t = 0; t < sl4; t++) {
            const int64_t kk = (s * sl4 + t) * 64;
            const __m256i *wp = U7 ? (const __m256i *)(w8 + kk) : (const __m256i *)(w16 + kk);
            const __m256i w0 = _mm256_loadu_si256(wp), w1 = _mm256_loadu_si256(wp + 1);  /* U7: channels 0-7, 8-15 */
            __m256i w2 = w0, w3 = w1;  /* else e0, o0, e1, o1 */
            if (!U7) w2 = _mm256_loadu_si256(wp + 2), w3 = _mm256_loadu_si256(wp + 3);
            for (int i = 0; i < MR; i++) {
                int32_t av;
                memcpy(&av, rows[i] + so + 4 * t, 4);
                const __m256i x = _mm256_set1_epi32(av);
                if (U7) {
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones));
                } else {
                    const __m256i xe = _mm256_and_si256(x, low), xo = _mm256_srli_epi16(x, 8);
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_add_epi32(_mm256_madd_epi16(xe, w0),
                                                                             _mm256_madd_epi16(xo, w1)));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_add_epi32(_mm256_madd_epi16(xe, w2),
                                                                             _mm256_madd_epi16(xo, w3)));
                }
            }
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_si256((__m256i *)out[i], acc[i][0]);
        _mm256_storeu_si256((__m256i *)(out[i] + 8), acc[i][1]);
    }
}

/* The accumulators of MR pixels of block b with the conv's kernel (8-bit products where its inputs allow). */
#define ACC16(MR, d, rows, b, segoff, acc) \
    ((d)->u7 ? acc16_avx2(1, MR, d, rows, b, segoff, acc) : acc16_avx2(0, MR, d, rows, b, segoff, acc))

static inline void emit_avx2(const Conv *d, const int32_t *acc, int64_t b, uint8_t *out, const uint8_t *res,
                             int *ovf) {
    for (int64_t l = 0, c = b * 16; l < 16 && c < d->o; l++, c++) {
        const uint8_t y = requant1c(d, acc[l], c, ovf);
        out[c] = d->add ? add1(d->add, y, res[c]) : y;
    }
}

/* The folded form of kernels.h on 8 channels (AVX2 has no 64-bit arithmetic right shift: with u = t + 2^63 taken
   as unsigned, floor(t / 2^s) = (u >> s) - 2^(63 - s) exactly). x: acc + bias as int32 (provably no overflow when
   the folded form applies); m, c, s: the even channels' and the odd channels' M0, C and 31 + e as int64 lanes. */
typedef struct { __m256i me, mo, ce, co, se, so, oe, oo; } Rq8;

static inline Rq8 rq8(const Requant *r, int64_t c0) {
    int64_t m[8], c[8], sh[8];
    for (int k = 0; k < 8; k++) {  /* the folded constants from the per-channel definition (kernels.h) */
        const int64_t e = r->right[c0 + k];
        m[k] = r->m0[c0 + k];
        c[k] = ((int64_t)1 << 30) + ((int64_t)1 << (e + 30)) + r->zp * ((int64_t)1 << (31 + e));
        sh[k] = 31 + e;
    }
    Rq8 v;
    v.me = _mm256_set_epi64x(m[6], m[4], m[2], m[0]);
    v.mo = _mm256_set_epi64x(m[7], m[5], m[3], m[1]);
    v.ce = _mm256_set_epi64x(c[6], c[4], c[2], c[0]);
    v.co = _mm256_set_epi64x(c[7], c[5], c[3], c[1]);
    v.se = _mm256_set_epi64x(sh[6], sh[4], sh[2], sh[0]);
    v.so = _mm256_set_epi64x(sh[7], sh[5], sh[3], sh[1]);
    const __m256i one = _mm256_set1_epi64x(1), s63 = _mm256_set1_epi64x(63);
    v.oe = _mm256_sllv_epi64(one, _mm256_sub_epi64(s63, v.se));
    v.oo = _mm256_sllv_epi64(one, _mm256_sub_epi64(s63, v.so));
    return v;
}

static inline __m256i rq8_half(__m256i p, __m256i c, __m256i s, __m256i off, int neg) {
    const __m256i sign = _mm256_set1_epi64x(INT64_MIN);  /* the sign bit */
    __m256i t = _mm256_add_epi64(p, c);
    if (neg) t = _mm256_sub_epi64(t, _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_setzero_si256(), p),
                                                      _mm256_set1_epi64x((int64_t)1 << 31)));
    return _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(t, sign), s), off);
}

/* 8 accumulators (no bias) -> 8 codes as int32 lanes. */
static inline __m256i rq8_apply(__m256i acc, const int32_t *b32, const Rq8 *v, int neg, __m256i lo, __m256i hi) {
    const __m256i x = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)b32));
    const __m256i ye = rq8_half(_mm256_mul_epi32(x, v->me), v->ce, v->se, v->oe, neg);
    const __m256i yo = rq8_half(_mm256_mul_epi32(_mm256_srli_epi64(x, 32), v->mo), v->co, v->so, v->oo, neg);
    const __m256i y = _mm256_blend_epi32(ye, _mm256_slli_epi64(yo, 32), 0xAA);  /* |y| < 2^31: the low dwords */
    return _mm256_min_epi32(_mm256_max_epi32(y, lo), hi);
}

/* The fused Add's folded form (kernels.h) on 8 codes, the AVX2 version of vnni.h's add_apply: each input rescaled
   (exactly linear, the int32 split form, or the int64 fold), summed, then the output fold; even and odd elements in
   the low dwords of int64 lanes. AVX2 has no 64-bit arithmetic right shift: floor(t / 2^s) = ((t ^ 2^63) >> s)
   - 2^(63 - s), with >> logical (exact for any int64 t and 0 < s < 64). */
typedef struct {
    __m256i z, alpha, m, c, n, mh, ml, k0, kn, off;
    __m128i ls, s, sh;
    int lin, split, neg;
} AddSide8;

typedef struct { AddSide8 own, res; __m256i my, cy, ny, offy, lo, hi; __m128i sy; int negy; } Add8;

static inline AddSide8 add_side8(int64_t z, int64_t alpha, int64_t ls, int64_t m, int64_t c, int64_t s, int64_t n,
                                 int64_t mh, int64_t ml, int64_t k0, int64_t kn, int64_t sh) {
    return (AddSide8){_mm256_set1_epi32((int32_t)z), _mm256_set1_epi32((int32_t)alpha), _mm256_set1_epi64x(m),
                      _mm256_set1_epi64x(c), _mm256_set1_epi64x(n), _mm256_set1_epi32((int32_t)mh),
                      _mm256_set1_epi32((int32_t)ml), _mm256_set1_epi32((int32_t)k0), _mm256_set1_epi32((int32_t)kn),
                      _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - s))), _mm_cvtsi64_si128(ls),
                      _mm_cvtsi64_si128(s), _mm_cvtsi64_si128(sh), alpha != 0, sh != 0, n != 0};
}

static inline Add8 add8_vec(const AddFuse *f) {
    return (Add8){add_side8(f->zs, f->alpha_s, f->ls, f->ms, f->cs, f->ss, f->ns, f->mhs, f->mls, f->k0s, f->kns,
                            f->shs),
                  add_side8(f->zr, f->alpha_r, f->ls, f->mr, f->cr, f->sr, f->nr, f->mhr, f->mlr, f->k0r, f->knr,
                            f->shr),
                  _mm256_set1_epi64x(f->my), _mm256_set1_epi64x(f->cy), _mm256_set1_epi64x(f->ny),
                  _mm256_set1_epi64x((int64_t)((uint64_t)1 << (63 - f->sy))), _mm256_set1_epi32((int32_t)f->qmin),
                  _mm256_set1_epi32((int32_t)f->qmax), _mm_cvtsi64_si128(f->sy), f->ny != 0};
}

/* (a + c - [a < 0] * n) >> s (arithmetic) for the int64 lanes a. */
static inline __m256i fold8(__m256i a, __m256i c, int neg, __m256i n, __m128i s, __m256i off) {
    __m256i t = _mm256_add_epi64(a, c);
    if (neg) t = _mm256_sub_epi64(t, _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_setzero_si256(), a), n));
    return _mm256_sub_epi64(_mm256_srl_epi64(_mm256_xor_si256(t, _mm256_set1_epi64x(INT64_MIN)), s), off);
}

/* One input's rescaled values (even elements in *ev, odd ones in *od: low dwords). */
static inline void rescale8(__m256i q, const AddSide8 *v, __m256i *ev, __m256i *od) {
    const __m256i d = _mm256_sub_epi32(q, v->z);
    if (v->lin || v->split) {
        __m256i r;
        if (v->lin) {
            r = _mm256_mullo_epi32(d, v->alpha);
        } else {  /* d*Mh + ((d*Ml + K0 - [d < 0]*Kn) >> S), all in int32 (program.py checks it on all codes) */
            __m256i t = _mm256_add_epi32(_mm256_mullo_epi32(d, v->ml), v->k0);
            t = _mm256_sub_epi32(t, _mm256_and_si256(_mm256_srai_epi32(d, 31), v->kn));
            r = _mm256_add_epi32(_mm256_mullo_epi32(d, v->mh), _mm256_sra_epi32(t, v->sh));
        }
        *ev = r;
        *od = _mm256_srli_epi64(r, 32);
        return;
    }
    const __m256i x = _mm256_sll_epi32(d, v->ls);
    *ev = fold8(_mm256_mul_epi32(x, v->m), v->c, v->neg, v->n, v->s, v->off);
    *od = fold8(_mm256_mul_epi32(_mm256_srli_epi64(x, 32), v->m), v->c, v->neg, v->n, v->s, v->off);
}

/* own: the conv's 8 codes (int32 lanes); res: the residual's 8 codes -> the Add's 8 codes (int32 lanes). */
static inline __m256i add8_apply(__m256i own, const uint8_t *res, const Add8 *v) {
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)res));
    __m256i se, so, re, ro;
    rescale8(own, &v->own, &se, &so);
    rescale8(q, &v->res, &re, &ro);
    se = _mm256_add_epi32(se, re);
    so = _mm256_add_epi32(so, ro);
    const __m256i ye = fold8(_mm256_mul_epi32(se, v->my), v->cy, v->negy, v->ny, v->sy, v->offy);
    const __m256i yo = fold8(_mm256_mul_epi32(so, v->my), v->cy, v->negy, v->ny, v->sy, v->offy);
    const __m256i y = _mm256_blend_epi32(ye, _mm256_slli_epi64(yo, 32), 0xAA);
    return _mm256_min_epi32(_mm256_max_epi32(y, v->lo), v->hi);
}

/* The tile's codes with the folded form: MR pixels of block b, all 16 channels present. */
static inline __attribute__((always_inline)) void emit_fast_avx2(const int MR, const Conv *d, int32_t acc[4][16],
                                                                 int64_t b, uint8_t *const *outs,
                                                                 const uint8_t *const *ress, const Rq8 *v,
                                                                 const Add8 *av) {
    const int64_t c0 = b * 16;
    const Rq8 v0 = v[0], v1 = v[1];
    const __m256i lo = _mm256_set1_epi32((int32_t)d->rq.qmin), hi = _mm256_set1_epi32((int32_t)d->rq.qmax);
    const int neg = (int)d->rq.fneg;
    for (int i = 0; i < MR; i++) {
        __m256i y0 = rq8_apply(_mm256_loadu_si256((const __m256i *)acc[i]), d->rq.b32 + c0, &v0, neg, lo, hi);
        __m256i y1 = rq8_apply(_mm256_loadu_si256((const __m256i *)(acc[i] + 8)), d->rq.b32 + c0 + 8, &v1, neg,
                               lo, hi);
        if (av) {  /* the fused Add, folded */
            y0 = add8_apply(y0, ress[i] + c0, av);
            y1 = add8_apply(y1, ress[i] + c0 + 8, av);
        }
        /* 16 int32 codes in [0, 255] -> 16 bytes in channel order */
        const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(y0, y1), 0xD8);
        const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
        uint8_t *o = outs[i] + c0;
        if (d->add && !av) {
            uint8_t t[16];
            _mm_storeu_si128((__m128i *)t, bytes);
            for (int l = 0; l < 16; l++) o[l] = add1(d->add, t[l], ress[i][c0 + l]);
        } else {
            _mm_storeu_si128((__m128i *)o, bytes);
        }
    }
}

void cnn_rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, const uint8_t *const *ress,
                    int64_t m, const int64_t *segoff, int *ovf) {
    const int64_t nb = (d->o + 15) / 16;
    int32_t acc[4][16];
    for (int64_t b = 0; b < nb; b++) {
        const int fast = d->rq.fast && !d->leaky && (b + 1) * 16 <= d->o;  /* the folded form on a full block */
        Rq8 v[2];  /* its constants, once per block */
        if (fast) v[0] = rq8(&d->rq, b * 16), v[1] = rq8(&d->rq, b * 16 + 8);
        Add8 addv;
        const Add8 *av = fast && d->add && d->add->fast ? (addv = add8_vec(d->add), &addv) : 0;
        int64_t i = 0;
        if (d->raw) {
            const int64_t cnt = d->o - b * 16 < 16 ? d->o - b * 16 : 16;
            for (; i < m; i++) {
                ACC16(1, d, rows + i, b, segoff, acc);
                memcpy((int32_t *)outs[i] + b * 16, acc[0], 4 * cnt);
            }
            continue;
        }
        for (; i + 4 <= m; i += 4) {
            ACC16(4, d, rows + i, b, segoff, acc);
            if (fast) emit_fast_avx2(4, d, acc, b, outs + i, ress ? ress + i : 0, v, av);
            else
                for (int r = 0; r < 4; r++) emit_avx2(d, acc[r], b, outs[i + r], ress ? ress[i + r] : 0, ovf);
        }
        for (; i < m; i++) {
            ACC16(1, d, rows + i, b, segoff, acc);
            if (fast) emit_fast_avx2(1, d, acc, b, outs + i, ress ? ress + i : 0, v, av);
            else emit_avx2(d, acc[0], b, outs[i], ress ? ress[i] : 0, ovf);
        }
    }
}

void cnn_pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf) {
    const int64_t nb = (d->o + 15) / 16;
    int32_t acc[4][16], best[16];
    for (int64_t b = 0; b < nb; b++) {
        ACC16(4, d, rows, b, segoff, acc);
        for (int l = 0; l < 16; l++) {
            const int32_t x = acc[0][l] > acc[1][l] ? acc[0][l] : acc[1][l];
            const int32_t y = acc[2][l] > acc[3][l] ? acc[2][l] : acc[3][l];
            best[l] = x > y ? x : y;
        }
        for (int l = 0; l < 16 && b * 16 + l < d->o; l++) out[b * 16 + l] = requant1(best[l], b * 16 + l, &d->rq, ovf);
    }
}
#else
/* Portable path: the same packed layout, plain loops, the definition (requant1) and the Add's table. */
static void dot16(const Conv *d, const uint8_t *row, int64_t b, const int64_t *segoff, int32_t *acc) {
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4;
    const int8_t *w = d->wp + b * k4 * 64;
    for (int l = 0; l < 16; l++) acc[l] = 0;
    for (int64_t s = 0; s < d->nseg; s++)
        for (int64_t t = 0; t < sl4; t++) {
            const uint8_t *a = row + segoff[s] + 4 * t;
            const int8_t *wv = w + (s * sl4 + t) * 64;
            for (int l = 0; l < 16; l++)
                acc[l] += a[0] * wv[4 * l] + a[1] * wv[4 * l + 1] + a[2] * wv[4 * l + 2] + a[3] * wv[4 * l + 3];
        }
}

void cnn_rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, const uint8_t *const *ress,
                    int64_t m, const int64_t *segoff, int *ovf) {
    const int64_t nb = (d->o + 15) / 16;
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < nb; b++) {
            int32_t acc[16];
            dot16(d, rows[i], b, segoff, acc);
            if (d->raw) {
                for (int64_t l = 0, c = b * 16; l < 16 && c < d->o; l++, c++) ((int32_t *)outs[i])[c] = acc[l];
                continue;
            }
            for (int64_t l = 0, c = b * 16; l < 16 && c < d->o; l++, c++) {
                const uint8_t y = requant1c(d, acc[l], c, ovf);
                outs[i][c] = d->add ? add1(d->add, y, ress[i][c]) : y;
            }
        }
}

void cnn_pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf) {
    const int64_t nb = (d->o + 15) / 16;
    for (int64_t b = 0; b < nb; b++) {
        int32_t best[16], acc[16];
        for (int i = 0; i < 4; i++) {
            dot16(d, rows[i], b, segoff, acc);
            for (int l = 0; l < 16; l++) best[l] = i == 0 || acc[l] > best[l] ? acc[l] : best[l];
        }
        for (int l = 0; l < 16 && b * 16 + l < d->o; l++) out[b * 16 + l] = requant1(best[l], b * 16 + l, &d->rq, ovf);
    }
}
#endif
