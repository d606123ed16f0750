/* The model's two float steps, outside the integer program: the input quantize and the output dequantize,
   written with the same IEEE double operations as IntegerModel.quantize_input / dequantize_output, so they give
   the same codes and floats bit for bit (float64 division, exact half-away-from-zero rounding). */

#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) && !defined(CNN_GENERIC)
#include <immintrin.h>
#endif

/* qmax: the highest code (255, or 127 for a model with 7-bit activations). */
void cnn_quantize_f32(const float *x, uint8_t *q, int64_t count, double scale, int64_t zp, int64_t qmax) {
    int64_t i = 0;
#if defined(__AVX512F__) && !defined(CNN_GENERIC)
    /* 8 at a time, the same IEEE operations (division, floor, compare, sign copy are exact or correctly rounded
       alike); max(r, 0) returns 0 for NaN (its second operand), as the scalar branch does. */
    const __m512d s = _mm512_set1_pd(scale), z = _mm512_set1_pd((double)zp), half = _mm512_set1_pd(0.5);
    const __m512d one = _mm512_set1_pd(1.0), lo = _mm512_setzero_pd(), hi = _mm512_set1_pd((double)qmax);
    const __m512i sign = _mm512_set1_epi64((int64_t)1 << 63);
    for (; i + 8 <= count; i += 8) {
        const __m512d t = _mm512_div_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i)), s);
        const __m512d m = _mm512_abs_pd(t), fl = _mm512_roundscale_pd(m, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __mmask8 up = _mm512_cmp_pd_mask(_mm512_sub_pd(m, fl), half, _CMP_GE_OQ);
        __m512d r = _mm512_mask_add_pd(fl, up, fl, one);
        r = _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(r),
                                                _mm512_and_si512(_mm512_castpd_si512(t), sign)));
        r = _mm512_min_pd(_mm512_max_pd(_mm512_add_pd(r, z), lo), hi);
        _mm_storel_epi64((__m128i *)(q + i), _mm512_cvtepi64_epi8(_mm512_cvttpd_epi64(r)));
    }
#endif
    for (; i < count; i++) {
        double t = (double)x[i] / scale, m = fabs(t), fl = floor(m);
        double r = copysign(fl + (m - fl >= 0.5 ? 1.0 : 0.0), t) + (double)zp;
        q[i] = r >= (double)qmax ? (uint8_t)qmax : (r >= 0.0 ? (uint8_t)r : 0); /* NaN -> 0 */
    }
}

void cnn_dequantize_u8(const uint8_t *q, float *y, int64_t count, double scale, int64_t zp) {
    for (int64_t i = 0; i < count; i++) y[i] = (float)((double)((int32_t)q[i] - (int32_t)zp) * scale);
}
