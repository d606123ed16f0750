/* GCC/Clang vector types of the float kernels outside the integer program (assign.c, adc.c): NAME holds LANES floats
   (NAME##i as many int32 lanes, the type of its comparisons), loaded unaligned by NAME##_load. The compiler maps
   them onto AVX-512, AVX2 or scalar code. */
#ifndef CNN_FLOATVEC_H
#define CNN_FLOATVEC_H
#include <stdint.h>
#include <string.h>

#define CNN_FLOAT_VECTOR(NAME, LANES)                                      \
    typedef float NAME __attribute__((vector_size(4 * (LANES))));          \
    typedef int32_t NAME##i __attribute__((vector_size(4 * (LANES))));    \
    static inline NAME NAME##_load(const float *p) {                       \
        NAME v;                                                            \
        memcpy(&v, p, sizeof v);                                           \
        return v;                                                          \
    }
#endif
