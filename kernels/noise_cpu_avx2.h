/* The AVX2 level's 8-lane Philox and table map, included by noise_cpu.c where USE_AVX2 is defined
 * (after its scalar philox_batch, to_normal and pair_table, which these compute lane by lane). */
#include <immintrin.h>

/* The same two functions on 8 lanes at once (AVX2): Philox of 8 consecutive blocks, then the table
 * map of 8 values. Integer operations and the one int -> float conversion only, so every lane
 * computes exactly what the scalar code above computes (tests compare the two builds). */

/* hi and lo 32-bit words of a * m, lane by lane. */
static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(a, m);                          /* lanes 0, 2, 4, 6 as 64 bits */
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);    /* lanes 1, 3, 5, 7 */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* The 32 random words of blocks block..block+7 in element order (u[4 * j + lane]). */
static void philox8(uint64_t block, uint32_t key0, uint32_t key1, uint32_t *u) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)block), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32((int)(uint32_t)(block >> 32)), c2 = _mm256_setzero_si256(), c3 = c2;
    const __m256i m0 = _mm256_set1_epi32((int)M0), m1 = _mm256_set1_epi32((int)M1);
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
        if (r) { k0 += W0; k1 += W1; }
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, &hi0, &lo0);
        mulhilo8(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c1 = lo1;
        c3 = lo0;
    }
    /* 4 x 8 transpose: lanes of a block next to each other. */
    __m256 a = _mm256_castsi256_ps(c0), b = _mm256_castsi256_ps(c1);
    __m256 c = _mm256_castsi256_ps(c2), d = _mm256_castsi256_ps(c3);
    __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
    __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm256_storeu_ps((float *)u, _mm256_permute2f128_ps(s0, s1, 0x20));
    _mm256_storeu_ps((float *)u + 8, _mm256_permute2f128_ps(s2, s3, 0x20));
    _mm256_storeu_ps((float *)u + 16, _mm256_permute2f128_ps(s0, s1, 0x31));
    _mm256_storeu_ps((float *)u + 24, _mm256_permute2f128_ps(s2, s3, 0x31));
}

/* far + ((near - far) * width_left >> shift) of 4 lanes (64-bit lanes, low word kept). */
static inline __m256i interpolate4(const uint64_t *pairs, __m128i index, __m128i width_left, __m128i shift) {
    __m256i pair = _mm256_i32gather_epi64((const long long *)pairs, index, 8);
    __m256i step = _mm256_srlv_epi64(_mm256_mul_epu32(pair, _mm256_cvtepu32_epi64(width_left)),
                                     _mm256_cvtepu32_epi64(shift));
    return _mm256_add_epi32(step, _mm256_srli_epi64(pair, 32));
}

static inline __m256 to_normal8(__m256i u, const uint64_t *pairs) {
    const __m256i low31 = _mm256_set1_epi32(0x7FFFFFFF), zero = _mm256_setzero_si256();
    const __m256i eight = _mm256_set1_epi32(K + 1), one = _mm256_set1_epi32(1);
    __m256i t = _mm256_andnot_si256(u, low31);  /* 0x7FFFFFFF - (u & 0x7FFFFFFF) */
    /* Bit length of t from a float's exponent: convert t >> 8 (or t itself when that is 0), both
     * below 2**23 and so exact; an exact conversion's exponent is floor(log2). */
    /* The masks are used as they come from the compare, never inverted: GCC 12 with AVX-512VL
     * miscompiled blendv(t, high, xor(cmpeq(high, 0), -1)) into blendv(t, high, cmpeq(high, 0)),
     * dropping the inversion without swapping the operands (see docs/design/noise.md). */
    __m256i high = _mm256_srli_epi32(t, 8);
    __m256i no_high = _mm256_cmpeq_epi32(high, zero);
    __m256i v = _mm256_blendv_epi8(high, t, no_high);
    __m256i exponent = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(v)), 23);
    __m256i length = _mm256_sub_epi32(exponent, _mm256_set1_epi32(126));          /* floor(log2 v) + 1 */
    length = _mm256_add_epi32(length, _mm256_andnot_si256(no_high, eight));
    length = _mm256_max_epi32(length, zero);                                       /* t == 0: 0 */
    __m256i shift = _mm256_max_epi32(_mm256_sub_epi32(length, eight), zero);
    __m256i far_index = _mm256_add_epi32(_mm256_slli_epi32(_mm256_sub_epi32(length, eight), K),
                                         _mm256_srlv_epi32(t, shift));
    __m256i index = _mm256_blendv_epi8(t, far_index, _mm256_cmpgt_epi32(length, eight));
    __m256i width = _mm256_sllv_epi32(one, shift);
    __m256i width_left = _mm256_sub_epi32(width, _mm256_and_si256(t, _mm256_sub_epi32(width, one)));
    __m256i lo = interpolate4(pairs, _mm256_castsi256_si128(index), _mm256_castsi256_si128(width_left),
                              _mm256_castsi256_si128(shift));
    __m256i hi = interpolate4(pairs, _mm256_extracti128_si256(index, 1), _mm256_extracti128_si256(width_left, 1),
                              _mm256_extracti128_si256(shift, 1));
    const __m256i words = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);  /* the low word of each 64-bit lane */
    __m256i fixed = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, words),
                                       _mm256_permutevar8x32_epi32(hi, words), 0xF0);
    __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(fixed), _mm256_set1_ps(1.0f / 134217728.0f));
    __m256i sign = _mm256_and_si256(u, _mm256_set1_epi32((int)0x80000000u));
#ifdef FAULT_T
    sign = _mm256_xor_si256(sign, _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)FAULT_T), t),
                                                   _mm256_set1_epi32((int)0x80000000u)));
#endif
    return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(value), sign));
}
