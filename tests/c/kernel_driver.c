/* Runs the CPU kernel's entry points once each, for tests/test_kernel_sanitizers.py: built with the
 * portable level's source under AddressSanitizer and UndefinedBehaviorSanitizer, its outputs are
 * compared with the torch reference there. Usage: kernel_driver TABLE WORDS K0 K1 > outputs
 * (TABLE: 3201 int32, WORDS: n uint32; outputs: float32 blocks, then 4 uint64 checksum words). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void fill_rows(float *, int64_t, int64_t, const int32_t *, uint32_t, uint32_t, int64_t, int64_t, int64_t);
void perturb_rows(float *, const float *, float *, float, int64_t, int64_t, const int32_t *, uint32_t, uint32_t,
                  int64_t, int64_t, int64_t);
void combine_rows(float *, int64_t, int64_t, const int32_t *, int64_t, const uint32_t *, const float *,
                  const float *const *, int64_t, int64_t, int64_t);
void bits_to_normal(const uint32_t *, int64_t, const int32_t *, float *);
void checksum_rows(const void *, int32_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint64_t *);

static void *read_all(const char *path, long *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) exit(2);
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc((size_t)*bytes);
    if (fread(data, 1, (size_t)*bytes, f) != (size_t)*bytes) exit(2);
    fclose(f);
    return data;
}

static void emit(const void *data, size_t bytes) { fwrite(data, 1, bytes, stdout); }

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    long table_bytes, word_bytes;
    int32_t *table = read_all(argv[1], &table_bytes);
    uint32_t *words = read_all(argv[2], &word_bytes);
    uint32_t k0 = (uint32_t)strtoul(argv[3], NULL, 10), k1 = (uint32_t)strtoul(argv[4], NULL, 10);
    int64_t n = word_bytes / 4;
    float *out = malloc((size_t)n * sizeof(float));
    bits_to_normal(words, n, table, out);
    emit(out, (size_t)n * sizeof(float));
    /* The shards of tests/test_kernel_sanitizers.py's SHARDS, in order. */
    const int64_t shards[][5] = {{1, 1001, 0, 0, 0}, {7, 13, 3, 5, 40}, {3, 300, 1, 77, 1000}, {1, 3, 0, 1, 0},
                                 {1, 300, 0, ((int64_t)1 << 34) - 40, 0}};
    for (int s = 0; s < 5; s++) {
        float *block = malloc((size_t)(shards[s][0] * shards[s][1]) * sizeof(float));
        fill_rows(block, shards[s][0], shards[s][1], table, k0, k1, shards[s][2], shards[s][3], shards[s][4]);
        emit(block, (size_t)(shards[s][0] * shards[s][1]) * sizeof(float));
        free(block);
    }
    float master[5 * 37], eps[5 * 37], dst[5 * 37], delta[5 * 37], kept[5 * 37];
    for (int i = 0; i < 5 * 37; i++) master[i] = (float)(i % 13 - 6) * 0.01f;
    perturb_rows(eps, master, dst, 0.003f, 5, 37, table, k0, k1, 0, 0, 37);
    emit(eps, sizeof eps);
    emit(dst, sizeof dst);
    fill_rows(kept, 5, 37, table, k0 + 1, k1, 0, 0, 37);
    uint32_t keys[6] = {k0, k1, k0 + 1, k1, k0 + 2, k1};
    float coeffs[3] = {0.5f, -0.25f, 1e-3f};
    const float *kept_rows[3] = {NULL, kept, NULL};
    combine_rows(delta, 5, 37, table, 3, keys, coeffs, kept_rows, 0, 0, 37);
    emit(delta, sizeof delta);
    uint64_t sums[4];
    checksum_rows(words, 4, 1, n, 0, 3, 0, sums);
    emit(sums, sizeof sums);
    checksum_rows(words, 2, 1, n * 2, 0, 5, 0, sums);  /* the same bytes as int16 words */
    emit(sums, sizeof sums);
    free(out); free(words); free(table);
    return 0;
}
