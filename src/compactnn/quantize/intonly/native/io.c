/* The model's two float steps, outside the integer program: the input quantize and the output dequantize,
   written with the same IEEE double operations as IntegerModel.quantize_input / dequantize_output, so they give
   the same codes and floats bit for bit (float64 division, exact half-away-from-zero rounding). */

#include <math.h>
#include <stdint.h>

void cnn_quantize_f32(const float *x, uint8_t *q, int64_t count, double scale, int64_t zp) {
    for (int64_t i = 0; i < count; i++) {
        double t = (double)x[i] / scale, m = fabs(t), fl = floor(m);
        double r = copysign(fl + (m - fl >= 0.5 ? 1.0 : 0.0), t) + (double)zp;
        q[i] = r >= 255.0 ? 255 : (r >= 0.0 ? (uint8_t)r : 0); /* NaN -> 0 */
    }
}

void cnn_dequantize_u8(const uint8_t *q, float *y, int64_t count, double scale, int64_t zp) {
    for (int64_t i = 0; i < count; i++) y[i] = (float)((double)((int32_t)q[i] - (int32_t)zp) * scale);
}
