/* The ES noise on CPU: Philox4x32-10 and the integer quantile-table map of esvllm/noise.py.
 *
 * fill_rows(out, rows, width, table, k0, k1, row0, col0, row_stride):
 *   out[r * width + c] = eps at element (row0 + r) * row_stride + col0 + c.
 * Every operation is integer arithmetic or one int -> float conversion, so the values are the
 * same bits as the torch reference and the CUDA kernel, whatever instructions the compiler picks.
 * The loops are written so that the compiler can vectorize them (batches of BATCH counters).
 * Built by esvllm/noise_cpu.py. */
#include <stdint.h>
#include <string.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u
#define K 7
#define BATCH 64

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
    memcpy(&value, &bits, 4);
    return value;
}

void fill_rows(float *out, int64_t rows, int64_t width, const int32_t *table, uint32_t k0, uint32_t k1,
               int64_t row0, int64_t col0, int64_t row_stride) {
    uint32_t u[4 * BATCH];
    for (int64_t r = 0; r < rows; r++) {
        int64_t first = (row0 + r) * row_stride + col0, last = first + width;  /* element indices */
        float *dst = out + r * width;
        for (int64_t start = first & ~(int64_t)3; start < last; start += 4 * BATCH) {
            philox_batch((uint64_t)(start >> 2), k0, k1, u);
            int64_t lo = start < first ? first : start;
            int64_t hi = start + 4 * BATCH < last ? start + 4 * BATCH : last;
            const uint32_t *bits = u + (lo - start);
            float *to = dst + (lo - first);
            for (int64_t i = 0; i < hi - lo; i++) to[i] = to_normal(bits[i], table);
        }
    }
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
