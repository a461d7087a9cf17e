/* The int8 kernels (runtime_c/kernels_int8.c) and the fp32 matvec on the board.
 *
 * PROMPT: n, then n cases of 9 words: mode, rows, cols, flags, x, w, scales, bias, reps.
 * x, w, scales, bias are flash addresses (bias only with FLAG_BIAS); each is DMAed into
 * the arena before the case runs. The weights land FLAGS bits 8..10 bytes past a 32-byte
 * boundary and the quantized vector FLAGS bits 12..14 bytes past one (to exercise
 * unaligned rows and vectors).
 *   mode 1 (int8):  quantize_vector_i8(x) then matvec_rows_i8 with int8 w [rows, cols] and
 *                   float scales [rows]. Two logits steps: y [rows]; then the quantized
 *                   vector's bytes as ceil(cols / 4) raw words followed by its scale.
 *   mode 2 (fp32):  matvec_rows with float w [rows, cols] (scales unused). One step: y.
 *   mode 3 (batch): FLAGS bits 16..23 = n vectors x [n, cols], each quantized and unpacked,
 *                   then matvec_rows_i8_batch (stage 4) with int8 w [rows, cols]. n logits
 *                   steps: y_p [rows] for p = 0 .. n-1.
 * The kernel calls run inside trace stages (int8: stage 1 quantize_vector_i8, stage 2
 * matvec_rows_i8; fp32: stage 3 matvec_rows), `reps` times each (>= 1), so the board's
 * per-stage wall time is the kernels' alone. A flash controller error ends the run with
 * EXIT_FLASH_ERROR, a bad case with EXIT_BAD_MAILBOX (ARG0: case, ARG1: word).
 */
#include <stddef.h>
#include "board_test.h"
#include "kernels.h"
#include "kernels_int8.h"

#ifndef ARENA_BYTES
#define ARENA_BYTES (14u * 1024u * 1024u)
#endif
uint8_t arena[ARENA_BYTES] __attribute__((section(".arena"), aligned(32)));

#define CASE_WORDS 9u
#define FLAG_BIAS 1u
#define FLAG_UNPACKED 2u   /* also unpack_i8 the quantized vector and pass it (the 4-row kernel) */
#define MODE_INT8 1u
#define MODE_FP32 2u
#define MODE_BATCH 3u
#define BATCH_MAX 16u
#define STAGE_QUANTIZE 1u
#define STAGE_MATVEC_I8 2u
#define STAGE_MATVEC_F32 3u
#define STAGE_MATVEC_I8_BATCH 4u

__attribute__((noreturn)) void board_exit(uint32_t code);

static void dma_read(uint32_t addr, void* dst, uint32_t len) {
    barrier();
    FLASHCTL_ADDR = addr;
    FLASHCTL_DST = (uint32_t)(uintptr_t)dst;
    FLASHCTL_LEN = len;
    FLASHCTL_CMD = FLASH_CMD_READ;
    uint32_t status;
    while (!((status = FLASHCTL_STATUS) & FLASH_STATUS_DONE)) {}
    barrier();
    if (status & FLASH_STATUS_ERROR) {
        SYSCTL_ARG0 = status;
        SYSCTL_ARG1 = addr;
        SYSCTL_ARG2 = len;
        board_exit(EXIT_FLASH_ERROR);
    }
}

/* Bump allocation in the arena, 32-byte aligned (as the firmware's tile buffers) + skew. */
static uint8_t* take(uint32_t* used, uint32_t bytes, uint32_t skew) {
    uint32_t at = (*used + 31u) & ~31u;
    *used = at + skew + bytes;
    if (*used > ARENA_BYTES) return NULL;
    return arena + at + skew;
}

static void dump(const void* p, uint32_t first, uint32_t count) {
    barrier();
    TRACE_LOGITS_ADDR = (uint32_t)(uintptr_t)p;
    TRACE_LOGITS_FIRST = first;
    TRACE_LOGITS_COUNT = count;
}

static int bad(uint32_t c, uint32_t word);

/* mode 3: n vectors against one int8 matrix, as the firmware's prefill chunks run it */
static int batch_case(uint32_t c, uint32_t rows, uint32_t cols, uint32_t flags, uint32_t x_addr,
                      uint32_t w_addr, uint32_t s_addr, uint32_t b_addr, uint32_t reps) {
    uint32_t n = (flags >> 16) & 0xFFu;
    if (n == 0 || n > BATCH_MAX) return bad(c, 3);
    if ((uint64_t)rows * cols + (uint64_t)n * cols * 8u + 8u * cols > ARENA_BYTES) return bad(c, 2);
    uint32_t used = 0;
    int8_t* w = (int8_t*)take(&used, rows * cols, (flags >> 8) & 7u);
    float* x = (float*)take(&used, 4u * cols * n, 0);
    float* s = (float*)take(&used, 4u * rows, 0);
    float* b = (float*)take(&used, 4u * rows, 0);
    float* y = (float*)take(&used, 4u * rows * n, 0);
    uint32_t* scratch = (uint32_t*)(void*)take(&used, 8u * cols, 0);
    float* yp[BATCH_MAX];
    const int8_t* qp[BATCH_MAX];
    const uint32_t* xup[BATCH_MAX];
    float sx[BATCH_MAX];
    int8_t* q[BATCH_MAX];
    uint32_t* xu[BATCH_MAX];
    for (uint32_t p = 0; p < n; p++) {
        q[p] = (int8_t*)take(&used, cols + 4u, (flags >> 12) & 7u);
        xu[p] = (uint32_t*)(void*)take(&used, 2u * cols + 8u, 0);
        if (!q[p] || !xu[p]) return bad(c, 2);
        qp[p] = q[p];
        xup[p] = xu[p];
        yp[p] = y + (size_t)p * rows;
    }
    if (!w || !x || !s || !b || !y || !scratch) return bad(c, 2);
    const float* bias = (flags & FLAG_BIAS) ? b : NULL;
    dma_read(w_addr, w, rows * cols);
    dma_read(x_addr, x, 4u * cols * n);
    dma_read(s_addr, s, 4u * rows);
    if (bias) dma_read(b_addr, b, 4u * rows);
    TRACE_STAGE = STAGE_QUANTIZE;
    for (uint32_t p = 0; p < n; p++) {
        quantize_vector_i8(q[p], &sx[p], x + (size_t)p * cols, (int)cols);
        unpack_i8(xu[p], q[p], (int)cols);
    }
    TRACE_STAGE = STAGE_MATVEC_I8_BATCH;
    for (uint32_t r = 0; r < reps; r++)
        matvec_rows_i8_batch(yp, w, s, bias, qp, xup, sx, (int)n, (int)rows, (int)cols, scratch);
    TRACE_STAGE = TRACE_IDLE;
    for (uint32_t p = 0; p < n; p++) {
        dump(yp[p], 0, rows);
        TRACE_TOKEN = p;
    }
    return EXIT_OK;
}

static int bad(uint32_t c, uint32_t word) {
    SYSCTL_ARG0 = c;
    SYSCTL_ARG1 = word;
    return EXIT_BAD_MAILBOX;
}

int main(void) {
    uint32_t n = PROMPT(0);
    for (uint32_t c = 0; c < n; c++) {
        uint32_t base = 1u + CASE_WORDS * c;
        uint32_t mode = PROMPT(base), rows = PROMPT(base + 1), cols = PROMPT(base + 2);
        uint32_t flags = PROMPT(base + 3), x_addr = PROMPT(base + 4), w_addr = PROMPT(base + 5);
        uint32_t s_addr = PROMPT(base + 6), b_addr = PROMPT(base + 7), reps = PROMPT(base + 8);
        if (mode != MODE_INT8 && mode != MODE_FP32 && mode != MODE_BATCH) return bad(c, 0);
        if (rows == 0 || rows > 0x100000u) return bad(c, 1);
        if (cols == 0 || cols > 0x100000u) return bad(c, 2);
        if (reps == 0) return bad(c, 8);
        if (mode == MODE_BATCH) {
            int code = batch_case(c, rows, cols, flags, x_addr, w_addr, s_addr, b_addr, reps);
            if (code != EXIT_OK) return code;
            continue;
        }
        uint32_t elem = mode == MODE_INT8 ? 1u : 4u;
        if ((uint64_t)rows * cols * elem > ARENA_BYTES) return bad(c, 2);
        uint32_t used = 0;
        uint8_t* w = take(&used, rows * cols * elem, (flags >> 8) & 7u);
        float* x = (float*)take(&used, 4u * cols, 0);
        float* s = (float*)take(&used, 4u * rows, 0);
        float* b = (float*)take(&used, 4u * rows, 0);
        float* y = (float*)take(&used, 4u * rows, 0);
        int8_t* qx = (int8_t*)take(&used, cols + 4u, (flags >> 12) & 7u);
        uint32_t* xu = (uint32_t*)(void*)take(&used, 2u * cols + 8u, 0);
        if (!w || !x || !s || !b || !y || !qx || !xu) return bad(c, 2);
        const float* bias = (flags & FLAG_BIAS) ? b : NULL;

        dma_read(w_addr, w, rows * cols * elem);
        dma_read(x_addr, x, 4u * cols);
        if (mode == MODE_INT8) dma_read(s_addr, s, 4u * rows);
        if (bias) dma_read(b_addr, b, 4u * rows);

        if (mode == MODE_INT8) {
            float sx = 0.0f;
            TRACE_STAGE = STAGE_QUANTIZE;
            for (uint32_t r = 0; r < reps; r++) quantize_vector_i8(qx, &sx, x, (int)cols);
            const uint32_t* unpacked = 0;
            if (flags & FLAG_UNPACKED) {
                unpack_i8(xu, qx, (int)cols);
                unpacked = xu;
            }
            TRACE_STAGE = STAGE_MATVEC_I8;
            for (uint32_t r = 0; r < reps; r++)
                matvec_rows_i8(y, (const int8_t*)w, s, bias, qx, unpacked, sx, (int)rows, (int)cols);
            TRACE_STAGE = TRACE_IDLE;
            dump(y, 0, rows);
            TRACE_TOKEN = 2u * c;
            uint32_t words = (cols + 3u) / 4u;
            for (uint32_t i = cols; i < 4u * words; i++) qx[i] = 0;
            dump(qx, 0, words);
            dump(&sx, words, 1);
            TRACE_TOKEN = 2u * c + 1u;
        } else {
            TRACE_STAGE = STAGE_MATVEC_F32;
            for (uint32_t r = 0; r < reps; r++)
                matvec_rows(y, (const float*)(const void*)w, bias, x, (int)rows, (int)cols);
            TRACE_STAGE = TRACE_IDLE;
            dump(y, 0, rows);
            TRACE_TOKEN = 2u * c;
        }
    }
    return EXIT_OK;
}
