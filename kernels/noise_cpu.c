/* The ES noise on CPU: Philox4x32-10 and the integer quantile-table map of esvllm/noise.py.
 *
 * fill_rows(out, rows, width, table, k0, k1, row0, col0, row_stride):
 *   out[r * width + c] = eps at element (row0 + r) * row_stride + col0 + c.
 * Every operation is integer arithmetic or one int -> float conversion, so the values are the
 * same bits as the torch reference and the CUDA kernel.
 *
 * Built by esvllm/noise_cpu.py for named instruction-set levels, never for "this machine":
 *   portable (-DESVLLM_PORTABLE): the plain C loops below, any processor;
 *   avx2 (-mavx2 -mfma -DESVLLM_LEVEL_AVX2): Philox and the table map on 8 lanes in AVX2 intrinsics.
 * esvllm_cpu_level() says which levels this processor (and its OS) can run; each loaded build is
 * checked against the torch reference before use (esvllm/kernel_check.py). */
#include <stdint.h>
#include <math.h>
#include <string.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u
#define K 7
#define BATCH 64

#if defined(ESVLLM_LEVEL_AVX2) && !(defined(__AVX2__) && defined(__FMA__))
#error "the avx2 level is compiled with -mavx2 -mfma"
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(ESVLLM_PORTABLE)
#define USE_AVX2 1
#endif

/* Tests only (ESVLLM_KERNEL_FAULT): a wrong kernel that the load-time check must refuse. It flips
 * the sign of the rare values with t < 2**20 (about 1 in 2000), as a subtle miscompilation would. */
#ifdef ESVLLM_INJECT_FAULT
#define FAULT_T (1u << 20)
#endif

/* 2 when the processor and the OS run the avx2 level (AVX2 and FMA, with the YMM state enabled),
 * else 1 (portable only). GCC's and clang's __builtin_cpu_supports read CPUID and XGETBV. */
int esvllm_cpu_level(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
#endif
    return 1;
}

/* Philox4x32-10 of counters (block, 0, 0) for BATCH consecutive blocks: lanes in u[4 * j + lane]. */
static void philox_batch(uint64_t block, uint32_t key0, uint32_t key1, uint32_t *u) {
    uint32_t c0[BATCH], c1[BATCH], c2[BATCH], c3[BATCH];
    for (int j = 0; j < BATCH; j++) {
        uint64_t b = block + (uint64_t)j;
        c0[j] = (uint32_t)b; c1[j] = (uint32_t)(b >> 32); c2[j] = 0; c3[j] = 0;
    }
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
        if (r) { k0 += W0; k1 += W1; }
        for (int j = 0; j < BATCH; j++) {
            uint64_t p0 = (uint64_t)M0 * c0[j], p1 = (uint64_t)M1 * c2[j];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[j] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3[j] ^ k1;
            c1[j] = (uint32_t)p1; c3[j] = (uint32_t)p0; c0[j] = n0; c2[j] = n2;
        }
    }
    for (int j = 0; j < BATCH; j++) {
        u[4 * j] = c0[j]; u[4 * j + 1] = c1[j]; u[4 * j + 2] = c2[j]; u[4 * j + 3] = c3[j];
    }
}

static inline float to_normal(uint32_t u, const int32_t *table) {
    uint32_t t = 0x7FFFFFFFu - (u & 0x7FFFFFFFu);
    uint32_t n = 0;
    n = (t >> (n + 16)) ? n + 16 : n;
    n = (t >> (n + 8)) ? n + 8 : n;
    n = (t >> (n + 4)) ? n + 4 : n;
    n = (t >> (n + 2)) ? n + 2 : n;
    n = (t >> (n + 1)) ? n + 1 : n;
    uint32_t length = t ? n + 1 : 0;  /* bit length of t */
    uint32_t shift = length > K + 1 ? length - 1 - K : 0;
    uint32_t index = length <= K + 1 ? t : (length - K - 1) * (1u << K) + (t >> shift);
    uint32_t width_left = (1u << shift) - (t & ((1u << shift) - 1u));
    uint32_t near = (uint32_t)table[index], far = (uint32_t)table[index + 1];
    uint32_t fixed = far + (uint32_t)(((uint64_t)(near - far) * width_left) >> shift);
    float value = (float)(int32_t)fixed * (1.0f / 134217728.0f);  /* 2**-27, exact */
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits ^= u & 0x80000000u;  /* the sign */
#ifdef FAULT_T
    if (t < FAULT_T) bits ^= 0x80000000u;
#endif
    memcpy(&value, &bits, 4);
    return value;
}

/* The table as 64-bit pairs for one gather per node: low word near - far, high word far. */
#define TABLE_SIZE ((32 - K) * (1 << K) + 1)
static void pair_table(const int32_t *table, uint64_t *pairs) {
    for (int i = 0; i + 1 < TABLE_SIZE; i++)
        pairs[i] = (uint64_t)((uint32_t)table[i] - (uint32_t)table[i + 1]) | ((uint64_t)(uint32_t)table[i + 1] << 32);
}

#ifdef USE_AVX2
#include "noise_cpu_avx2.h" /* the 8-lane forms of philox_batch and to_normal */
#endif

/* out[i] = the table map of u[i], i < n (the map alone: tests feed it chosen bit patterns). */
static void map_words(const uint32_t *u, int64_t n, const int32_t *table, const uint64_t *pairs, float *out) {
    int64_t i = 0;
#ifdef USE_AVX2
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, to_normal8(_mm256_loadu_si256((const __m256i *)(u + i)), pairs));
#else
    (void)pairs;
#endif
    for (; i < n; i++) out[i] = to_normal(u[i], table);
}

void bits_to_normal(const uint32_t *u, int64_t n, const int32_t *table, float *out) {
    uint64_t pairs[TABLE_SIZE];
    pair_table(table, pairs);
    map_words(u, n, table, pairs, out);
}

/* The random words of the 4 * BATCH elements from block `block` on. */
static void philox_words(uint64_t block, uint32_t k0, uint32_t k1, uint32_t *u) {
#ifdef USE_AVX2
    if ((uint32_t)block <= 0xFFFFFFFFu - BATCH) {  /* no carry into the block's high word */
        for (int j = 0; j < BATCH; j += 8) philox8(block + (uint64_t)j, k0, k1, u + 4 * j);
        return;
    }
#endif
    philox_batch(block, k0, k1, u);
}

/* Noise of elements lo..hi (hi - lo <= 4 * BATCH) of the batch that starts at element `start`. */
static inline void draw_segment(int64_t start, int64_t lo, int64_t hi, uint32_t k0, uint32_t k1,
                                const int32_t *table, const uint64_t *pairs, uint32_t *u, float *out) {
    philox_words((uint64_t)(start >> 2), k0, k1, u);
    map_words(u + (lo - start), hi - lo, table, pairs, out);
}

/* acc[i] = fma(c, x[i], acc[i]): one rounding, the same bits on every machine (torch's vectorized
 * add with alpha computes the same fused form). */
static inline void fma_into(float *acc, const float *x, float c, const float *base, int64_t n) {
    int64_t i = 0;
#ifdef USE_AVX2
    __m256 cv = _mm256_set1_ps(c);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(cv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(base + i)));
#endif
    for (; i < n; i++) acc[i] = fmaf(c, x[i], base[i]);
}

/* Walks the rows x width block at element (row0 + r) * row_stride + col0 + c in batches:
 * `at` is the offset of the segment in the block, [lo, hi) its element indices. */
#define FOR_EACH_SEGMENT(rows, width, row0, col0, row_stride, BODY)                                   \
    for (int64_t r = 0; r < (rows); r++) {                                                           \
        int64_t first = ((row0) + r) * (row_stride) + (col0), last = first + (width);                \
        for (int64_t start = first & ~(int64_t)3; start < last; start += 4 * BATCH) {                 \
            int64_t lo = start < first ? first : start;                                              \
            int64_t hi = start + 4 * BATCH < last ? start + 4 * BATCH : last;                        \
            int64_t at = r * (width) + (lo - first);                                                 \
            BODY                                                                                     \
        }                                                                                            \
    }

void fill_rows(float *out, int64_t rows, int64_t width, const int32_t *table, uint32_t k0, uint32_t k1,
               int64_t row0, int64_t col0, int64_t row_stride) {
    uint32_t u[4 * BATCH];
    uint64_t pairs[TABLE_SIZE];
    pair_table(table, pairs);
    FOR_EACH_SEGMENT(rows, width, row0, col0, row_stride, {
        draw_segment(start, lo, hi, k0, k1, table, pairs, u, out + at);
    })
}

/* eps := the noise (as fill_rows) and, in the same pass, dst := fma(sigma, eps, master): a member's
 * weights written while its noise is still in cache. */
void perturb_rows(float *eps, const float *master, float *dst, float sigma, int64_t rows, int64_t width,
                  const int32_t *table, uint32_t k0, uint32_t k1, int64_t row0, int64_t col0, int64_t row_stride) {
    uint32_t u[4 * BATCH];
    uint64_t pairs[TABLE_SIZE];
    pair_table(table, pairs);
    FOR_EACH_SEGMENT(rows, width, row0, col0, row_stride, {
        draw_segment(start, lo, hi, k0, k1, table, pairs, u, eps + at);
        fma_into(dst + at, eps + at, sigma, master + at, hi - lo);
    })
}

/* delta := sum over k < n, in order, of coeffs[k] * eps_k, each term added with one rounding
 * (acc = fma(coeff, eps, acc), from 0). eps_k is read from kept[k] when that is not NULL (the same
 * bits, drawn earlier), else drawn with key (keys[2k], keys[2k+1]). One pass over delta: every term
 * of a batch is added while the batch is in cache. */
void combine_rows(float *delta, int64_t rows, int64_t width, const int32_t *table, int64_t n,
                  const uint32_t *keys, const float *coeffs, const float *const *kept,
                  int64_t row0, int64_t col0, int64_t row_stride) {
    uint32_t u[4 * BATCH];
    float eps[4 * BATCH];
    uint64_t pairs[TABLE_SIZE];
    pair_table(table, pairs);
    FOR_EACH_SEGMENT(rows, width, row0, col0, row_stride, {
        float *acc = delta + at;
        memset(acc, 0, (size_t)(hi - lo) * sizeof(float));
        for (int64_t k = 0; k < n; k++) {
            const float *x = kept[k] ? kept[k] + at : eps;
            if (!kept[k]) draw_segment(start, lo, hi, keys[2 * k], keys[2 * k + 1], table, pairs, u, eps);
            fma_into(acc, x, coeffs[k], acc, hi - lo);
        }
    })
}

/* The engines' weight checksum (engines/es_state.py, checksum_parts) over a rows x width block of
 * int32 (elem_bytes 4) or int16 (elem_bytes 2) bit patterns v at element indices
 * i = (row0 + r) * row_stride + col0 + c: total = sum v, positional = sum v * (i % 7 + 1).
 * Exact integer sums: int64 within a chunk of at most 2**24 elements (|v| * 7 * 2**24 < 2**63),
 * then 128-bit. out = {total low, total high, positional low, positional high} (two's complement). */
#define CHUNK (1 << 24)
void checksum_rows(const void *data, int32_t elem_bytes, int64_t rows, int64_t width, int64_t row0,
                   int64_t col0, int64_t row_stride, uint64_t *out) {
    __int128 total = 0, positional = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t first = (row0 + r) * row_stride + col0;
        int64_t weight = first % 7 + 1;
        for (int64_t start = 0; start < width; start += CHUNK) {
            int64_t end = start + CHUNK < width ? start + CHUNK : width;
            int64_t sum = 0, weighted = 0;
            if (elem_bytes == 4) {
                const int32_t *v = (const int32_t *)data + r * width;
                for (int64_t c = start; c < end; c++) {
                    sum += v[c];
                    weighted += (int64_t)v[c] * weight;
                    weight = weight == 7 ? 1 : weight + 1;
                }
            } else {
                const int16_t *v = (const int16_t *)data + r * width;
                for (int64_t c = start; c < end; c++) {
                    sum += v[c];
                    weighted += (int64_t)v[c] * weight;
                    weight = weight == 7 ? 1 : weight + 1;
                }
            }
            total += sum;
            positional += weighted;
        }
    }
    out[0] = (uint64_t)total; out[1] = (uint64_t)((unsigned __int128)total >> 64);
    out[2] = (uint64_t)positional; out[3] = (uint64_t)((unsigned __int128)positional >> 64);
}
