// The firmware's runtime: GPT-2, one atomic stage at a time, weights streamed from flash.
//
// A token's journey, in the order of this file:
//   1. boot: check the flash image (header, plan id, tables) and the host's request
//   2. forward(): for each stage of the image's stage table, in order, read its weights from
//      flash into the arena (a tile of matrix rows at a time, double-buffered: the next
//      tile's DMA runs while this one is computed; every blob CRC-checked, every row read
//      checked against its row CRC; a failed check is read again once) and
//      apply it to the activations: embed, then per block ln_1, attn_qkv, attn_core,
//      attn_proj, ln_2, mlp, then the head's logits, one vocabulary tile at a time, into a
//      running top-k
//   3. choose the next token from the top-k (greedy or seeded sampling), print its bytes,
//      and feed it back to 2.
// It computes what compiler/reference.py computes, operation for operation.
//
// RAM: every buffer sits in a static arena at the offset the memory plan gave it
// (model_plan.h): the SRAM arena, or on a board with a data TCM the TCM arena for the
// buffers DMA refills. Nothing is allocated; nothing of the image's tables is kept in RAM
// beyond the entry being used. Freestanding C11, float32 only.
#include <stddef.h>
#include <stdint.h>
#include "flash_layout.h"
#include "hal.h"
#include "kernels.h"
#include "kernels_int8.h"
#include "memory_map.h"
#include "model_plan.h"
#include "prng.h"
#include "runtime.h"

// ----------------------------------------------------------------------------
// the arena: one block of RAM, every buffer at its planned offset
//
// On the board it is a NOLOAD section that startup never zeroes (the board paints RAM
// before reset to measure how much of the arena was really touched). Nothing here reads a
// buffer before writing it, so it needs no zeroing either.

#ifdef __arm__
#define ARENA_SECTION __attribute__((section(".bss.arena")))
#else
#define ARENA_SECTION
#endif
uint8_t arena[ARENA_BYTES] ARENA_SECTION __attribute__((aligned(32)));
#if TCM_ARENA_BYTES
// The data TCM's arena (zero-wait, not cached): the weight tiles, the KV block and the int8
// input vector, when the plan put them there. The linker places .dtcm in the TCM.
#ifdef __arm__
#define TCM_SECTION __attribute__((section(".dtcm")))
#else
#define TCM_SECTION
#endif
uint8_t tcm_arena[TCM_ARENA_BYTES] TCM_SECTION __attribute__((aligned(32)));
#endif

// A buffer's address: BUF_<name>_ARENA names its arena (model_plan.h).
#define BUF_ADDR(name) (BUF_##name##_ARENA + BUF_##name##_OFFSET)
#define BUF(name) ((float*)BUF_ADDR(name))
// x       (N_EMBD,)            the residual stream
// h       (N_EMBD,)            layer-norm output; the input of the next matrix
// qkv     (3 N_EMBD,)          query, key, value of this position
// att     (N_EMBD,)            attention output, heads side by side
// hidden  (4 N_EMBD,)          MLP hidden layer
// scores  (N_CTX,)             one head's attention weights
// params  (vector,)            the stage's current vector(s): gain+bias, or one bias
// weights (tile rows, cols)    one tile of a matrix streamed from flash
// weights_next                 the other tile buffer: the next tile streams in while one is used
// logits  (head tile rows,)    one vocabulary tile of logits
// kv      keys (N_LAYER, N_CTX, N_EMBD), then values (N_LAYER, N_CTX, N_EMBD)
#define TOPK ((TopK*)BUF_ADDR(TOPK))  // the head's running top-k
// x, h, qkv, att, hidden and xq hold PREFILL_CHUNK slots: one per position of a chunk
#define X_(p) (BUF(X) + (size_t)(p) * N_EMBD)
#define H_(p) (BUF(H) + (size_t)(p) * N_EMBD)
#define QKV_(p) (BUF(QKV) + (size_t)(p) * 3 * N_EMBD)
#define ATT_(p) (BUF(ATT) + (size_t)(p) * N_EMBD)
#define HIDDEN_(p) (BUF(HIDDEN) + (size_t)(p) * 4 * N_EMBD)
#define KV_KEYS(layer) (BUF(KV) + (size_t)(layer) * N_CTX * N_EMBD)
#define KV_VALUES(layer) (BUF(KV) + (size_t)(N_LAYER + (layer)) * N_CTX * N_EMBD)

// The plan sized the buffers; these say what this file puts in them.
#define F32 4u

#define P_ PREFILL_CHUNK
_Static_assert(P_ >= 1 && BUF_X_BYTES >= P_ * N_EMBD * F32 && BUF_H_BYTES >= P_ * N_EMBD * F32, "x, h");
_Static_assert(BUF_QKV_BYTES >= P_ * 3 * N_EMBD * F32 && BUF_ATT_BYTES >= P_ * N_EMBD * F32, "qkv, att");
_Static_assert(BUF_HIDDEN_BYTES >= P_ * 4 * N_EMBD * F32 && BUF_SCORES_BYTES >= N_CTX * F32, "hidden, scores");
_Static_assert(BUF_PARAMS_BYTES >= 4 * N_EMBD * F32, "params: the largest bias (b_fc), or gain+bias");
#if KV_INT8   // rows of KV_ROW_BYTES: a float32 scale, then HEAD_DIM int8; read a block at a time
_Static_assert(KV_ROW_BYTES >= F32 + HEAD_DIM && KV_ROW_BYTES % 4 == 0, "int8 KV row");
#if KV_IN_SRAM
_Static_assert(BUF_KV_BYTES >= 2u * N_LAYER * N_HEAD * N_CTX * KV_ROW_BYTES, "kv");
#else   // two blocks, one read while the other is used (one when a block holds the context)
_Static_assert(KV_BLOCK_POSITIONS >= 1 && BUF_KV_ROWS_BYTES >= (N_CTX > KV_BLOCK_POSITIONS ? 2u : 1u)
               * KV_BLOCK_POSITIONS * KV_ROW_BYTES, "kv_rows");
#endif
#elif KV_IN_SRAM
_Static_assert(BUF_KV_BYTES >= 2u * N_LAYER * N_CTX * N_EMBD * F32, "kv");
#else  // the cache is in PSRAM; the arena holds one block of one head's rows, check words included
_Static_assert(KV_BLOCK_POSITIONS >= 1 && BUF_KV_BLOCK_BYTES >= KV_BLOCK_POSITIONS * KV_ROW_BYTES, "kv_block");
_Static_assert(KV_ROW_BYTES == HEAD_DIM * F32 + PSRAM_CHECK_BYTES, "fp32 KV row in PSRAM");
#endif
#if !KV_IN_SRAM
_Static_assert(PSRAM_CHECK_BYTES == 4 && KV_ROW_BYTES % 4 == 0, "a KV row in PSRAM ends in its check word");
#endif
// (The weight tiles and the head's logits fit their buffers: compiler/codegen.py checks
// every tensor's tile rows before it renders TENSOR_PLAN_TABLE.)
#if WEIGHTS_INT8
// xq: the widest quantized input (4 N_EMBD int8), then the same unpacked for the 4-row
// kernel (kernels_int8.h unpack_i8: 2 bytes per element)
#define XU_OFFSET (4u * N_EMBD)
#define XQ_SLOT (12u * N_EMBD + 8u)   // one position's (the kernels read 8 bytes past xu)
_Static_assert(BUF_XQ_BYTES >= P_ * XQ_SLOT && XU_OFFSET % 8 == 0 && XQ_SLOT % 8 == 0, "xq");
#if PREFILL_CHUNK > 1
_Static_assert(BUF_WU_BYTES >= 8u * 4u * N_EMBD, "wu: four rows of the widest matrix, unpacked");
#endif
#endif
_Static_assert(BUF_TOPK_BYTES >= sizeof(TopK), "topk: the head's running top-k");
_Static_assert(N_CTX <= N_CTX_MODEL && N_EMBD == N_HEAD * HEAD_DIM, "model shape");
// ln_1 and ln_2 run in one function, which opens its tensors with ln_1's role names
_Static_assert(ROLE_LN_1_GAIN == ROLE_LN_2_GAIN && ROLE_LN_1_BIAS == ROLE_LN_2_BIAS, "layer norm roles");

// What the stage table's entries must hold, by kind and role (target/stages.py, shapes
// from the plan), and how each tensor of the image is planned: its tile rows, and where it
// sits in SRAM when resident.
typedef struct {
    uint32_t tile_rows;        // rows per weight tile (every row, for a tensor not streamed)
    uint32_t resident_offset;  // arena offset of its bytes (laid out as in flash), or NOT_RESIDENT
    uint32_t psram_offset;     // PSRAM address of its part in the PSRAM tier, or NOT_RESIDENT
    uint32_t psram_tail;       // bytes at the end of each full tile that come from that part
    uint32_t crc;              // the blob's CRC32 in the image compiled with this firmware
} TensorPlan;
static const RoleSpec ROLE_SPEC[STAGE_KIND_COUNT][STAGE_MAX_TENSORS] = ROLE_SPEC_TABLE;
static const TensorPlan TENSOR_PLAN[TENSOR_COUNT] = TENSOR_PLAN_TABLE;
// The stage table the image must hold, entry for entry (the image's own is checked against it).
typedef struct {
    uint32_t kind, layer, n_tensors;
    uint32_t tensors[STAGE_MAX_TENSORS];
} StagePlan;
static const StagePlan STAGE_PLAN[STAGE_COUNT] = STAGE_PLAN_TABLE;

// The few things kept outside the arena (.bss, the plan's firmware reserve):
static ImageHeader header;   // the image's header, checked at boot
static Prng rng;             // seeded once per run

// The host's request, from the mailbox.
typedef struct {
    uint32_t n_prompt;       // prompt tokens, 1..
    uint32_t n_new;          // tokens to generate
    float temperature;       // 0: greedy
    uint32_t top_k;          // 1..TOPK_MAX, for sampling
    uint64_t seed;
    uint32_t flags;          // MAILBOX_FLAG_*
    uint32_t chunk;          // prompt positions per chunk, 1..PREFILL_CHUNK
} Request;
static Request request;

// ----------------------------------------------------------------------------
// reading the image: one table entry at a time, every blob through the CRC unit
//
// A CRC-checked read whose check fails is read again once (trace_crc_retry tells the board):
// a transient error (a disturbed bus, a marginal read) passes the second time and the run
// goes on; a persistent one (the bytes in flash are wrong) fails again and ends the run
// naming the tensor (the board names the stage the trace unit has open). A blob read in
// tiles is checked after its last tile, when the stage has already computed with it: then
// the whole forward pass is run again (forward()), which is idempotent.

// Where the first differing u32 field of an entry is (byte offset), or -1: the entry and the
// plan's copy are both arrays of u32.
static int32_t first_difference(const uint32_t* found, const uint32_t* expected, uint32_t words) {
    for (uint32_t k = 0; k < words; k++) {
        if (found[k] != expected[k]) return (int32_t)(k * 4u);
    }
    return -1;
}

// Stage entry i, which must be the plan's STAGE_PLAN[i] (kind, layer, tensors); read again
// once if it is not. flash_bytes_per_token and macs are figures for reports, not checked.
static void read_stage(uint32_t i, StageEntry* s) {
    _Static_assert(offsetof(StageEntry, tensors) + sizeof s->tensors == sizeof(StagePlan), "StagePlan = StageEntry's head");
    if (i >= STAGE_COUNT) board_exit(EXIT_BAD_STAGE, i, offsetof(StageEntry, kind), 0);
    int32_t at = 0;
    for (uint32_t attempt = 0; attempt < 2 && at >= 0; attempt++) {
        if (attempt) trace_crc_retry(CRC_RETRY_SECTION);
        flash_read(header.tables_offset + i * (uint32_t)sizeof(StageEntry), s, sizeof *s);
        at = first_difference(&s->kind, &STAGE_PLAN[i].kind, sizeof(StagePlan) / 4u);
    }
    if (at >= 0) board_exit(EXIT_BAD_STAGE, i, (uint32_t)at, ((const uint32_t*)s)[at / 4]);
}

// The first wrong field of tensor entry `index` (its byte offset), or -1: its blob must be on
// a sector inside the image's weights, int8 in the plan's tiles, its row CRC table (if any)
// inside the tables, and with a `spec`, of the role's shape and dtype (a tensor of another
// shape would overrun the buffer it is about to fill).
static int32_t tensor_entry_problem(uint32_t index, const TensorEntry* t, const RoleSpec* spec) {
    uint32_t tensors_offset = header.tables_offset + header.stage_count * (uint32_t)sizeof(StageEntry);
    uint32_t weights_end = header.weights_offset + header.weights_size;
    uint32_t tables_end = header.tables_offset + header.tables_size;
    uint32_t tile_rows = t->dtype == DTYPE_INT8_TILED ? TENSOR_PLAN[index].tile_rows : 0;
    if (t->offset % IMAGE_SECTOR || t->offset < header.weights_offset || t->offset > weights_end ||
        t->size > weights_end - t->offset) {
        return (int32_t)offsetof(TensorEntry, offset);
    }
    if (t->tile_rows != tile_rows) return (int32_t)offsetof(TensorEntry, tile_rows);
    // weights edited and their CRCs sealed again pass every CRC check: they are another
    // model's, and only the CRC the build recorded tells them apart
    if (t->crc != TENSOR_PLAN[index].crc) return (int32_t)offsetof(TensorEntry, crc);
    if (t->row_crcs && (t->row_crcs < tensors_offset || t->row_crcs > tables_end || t->rows > (tables_end - t->row_crcs) / 4u)) {
        return (int32_t)offsetof(TensorEntry, row_crcs);
    }
    if (!spec) return -1;
    return t->rows != spec->rows ? (int32_t)offsetof(TensorEntry, rows)
         : t->cols != spec->cols ? (int32_t)offsetof(TensorEntry, cols)
         : t->dtype != spec->dtype ? (int32_t)offsetof(TensorEntry, dtype)
         : t->size != spec->rows * spec->row_bytes ? (int32_t)offsetof(TensorEntry, size) : -1;
}

// Tensor entry `index`, checked as above; an entry that fails is read again once (a transient
// read error passes the second time), then EXIT_BAD_TENSOR_ENTRY names the field.
static void read_tensor_entry(uint32_t index, TensorEntry* t, const RoleSpec* spec) {
    uint32_t tensors_offset = header.tables_offset + header.stage_count * (uint32_t)sizeof(StageEntry);
    int32_t at = 0;
    for (uint32_t attempt = 0; attempt < 2 && at >= 0; attempt++) {
        if (attempt) trace_crc_retry(index);
        flash_read(tensors_offset + index * (uint32_t)sizeof(TensorEntry), t, sizeof *t);
        at = tensor_entry_problem(index, t, spec);
    }
    if (at >= 0) board_exit(EXIT_BAD_TENSOR_ENTRY, index, (uint32_t)at, *(const uint32_t*)(const void*)((const uint8_t*)t + at));
}

// The TensorEntry of the stage's tensor in `role` (a ROLE_* of its kind), checked against
// the role's spec. Returns its index in the tensor table.
static uint32_t open_tensor(uint32_t stage, const StageEntry* s, uint32_t role, TensorEntry* t) {
    uint32_t index = s->tensors[role];   // read_stage: the plan's
    read_tensor_entry(index, t, &ROLE_SPEC[s->kind][role]);
    (void)stage;
    return index;
}

// 1 when a blob's CRC, read from the CRC unit, matches its entry's. On a first mismatch
// (attempt 0) tells the board and returns 0: read it again; on a second, ends the run.
static int crc_ok(uint32_t attempt, uint32_t index, const TensorEntry* t, uint32_t computed) {
    if (computed == t->crc) return 1;
    if (attempt) board_exit(EXIT_BAD_TENSOR_CRC, index, t->crc, computed);
    trace_crc_retry(index);
    return 0;
}

// ----------------------------------------------------------------------------
// resident weights: the plan's grouping keeps some tensors in SRAM across tokens. They are
// read and CRC-checked once at boot; from then on their stages read them from the arena,
// and a stage whose tensors are all resident reads no flash at all.

// The tensor's bytes in SRAM, or 0 when it streams from flash.
static const uint8_t* resident(uint32_t tensor) {
    uint32_t offset = TENSOR_PLAN[tensor].resident_offset;
    return offset == NOT_RESIDENT ? 0 : arena + offset;
}

// VERIFY_AT_BOOT: every weight blob that streams is CRC-checked once here, through the CRC
// unit a weight buffer at a time; from then on its reads skip the CRC unit (the plan's
// verify_why says why). Resident tensors are checked as they are loaded.
static uint32_t section_crc(uint32_t offset, uint32_t size);

static void verify_weights(void) {
#if VERIFY_AT_BOOT
    for (uint32_t i = 0; i < TENSOR_COUNT; i++) {
        if (TENSOR_PLAN[i].resident_offset != NOT_RESIDENT || TENSOR_PLAN[i].psram_offset != NOT_RESIDENT) continue;
        TensorEntry t;
        read_tensor_entry(i, &t, 0);
        for (uint32_t attempt = 0; !crc_ok(attempt, i, &t, section_crc(t.offset, t.size)); attempt++) {
        }
    }
#endif
}

// The PSRAM's check words. The PSRAM has no ECC and nothing on its bus would notice a
// flipped bit, so each KV row and each tier tail stored there is followed by a check word
// the CPU computes as it writes them and verifies on every read: a multiply-add hash over
// 32-bit words in four lanes, h = h * P + w, seeded with the PSRAM address (docs/runtime.md,
// "The PSRAM's check words"). An error confined to one word always changes it (adding a word
// and multiplying by an odd number are both one-to-one), the same data read from another
// address always fails, and a word costs one multiply-accumulate (MLA) and half a 64-bit
// load: attention checks every cached row it reads, so this is on its inner path (the CRC
// unit sits on the flash's DMA).
#define CHECK_PRIME 16777619u
#define CHECK_BASIS 2166136261u
static inline uint32_t psram_check(const void* p, uint32_t bytes, uint32_t psram_addr) {
    const uint32_t* w = (const uint32_t*)p;
    uint32_t n = bytes / 4u, whole = n & ~3u, k = 0;
    // four lanes (words 4i, 4i+1, ...): four independent multiply chains keep the multiplier busy
    uint32_t h0 = CHECK_BASIS ^ psram_addr, h1 = h0 + 1u, h2 = h0 + 2u, h3 = h0 + 3u;
    for (; k < whole; k += 4u) {
        h0 = h0 * CHECK_PRIME + w[k];
        h1 = h1 * CHECK_PRIME + w[k + 1u];
        h2 = h2 * CHECK_PRIME + w[k + 2u];
        h3 = h3 * CHECK_PRIME + w[k + 3u];
    }
    for (; k < n; k++) h0 = h0 * CHECK_PRIME + w[k];
    return ((h0 * CHECK_PRIME + h1) * CHECK_PRIME + h2) * CHECK_PRIME + h3;
}

// The check word after `bytes` of data (both word-aligned, as psram_check reads them).
static inline uint32_t* check_word(uint8_t* data, uint32_t bytes) {
    return (uint32_t*)(void*)(data + bytes);
}

// The PSRAM tier: the tail of each full tile of its tensors copied from flash to the PSRAM
// once at boot. The whole blob streams through a weight tile buffer and the CRC unit a tile
// at a time (checked here, not again), and each tile's tail goes to the PSRAM from that
// buffer, so the PSRAM holds the bytes the CRC saw, each tail followed by its check word
// (the tile buffers have room for it past the tile). matrix_fetch then reads each tile's
// tail from the PSRAM while the flash delivers the rest.
static void load_psram_tier(void) {
#if !RUNTIME_XIP
    for (uint32_t i = 0; i < TENSOR_COUNT; i++) {
        const TensorPlan* p = &TENSOR_PLAN[i];
        if (p->psram_offset == NOT_RESIDENT) continue;
        TensorEntry t;
        read_tensor_entry(i, &t, 0);
        uint32_t tile = p->tile_rows * (t.size / t.rows);   // a full tile's bytes (rows of equal size)
        if (tile + PSRAM_CHECK_BYTES > BUF_WEIGHTS_BYTES || p->psram_tail > tile || p->psram_tail % 4u) {   // not the plan's
            board_exit(EXIT_BAD_TENSOR_ENTRY, i, offsetof(TensorEntry, size), t.size);
        }
        for (uint32_t attempt = 0;; attempt++) {
            crc_begin();
            uint32_t to = p->psram_offset;
            for (uint32_t done = 0; done < t.size;) {
                uint32_t n = t.size - done < tile ? t.size - done : tile;
                flash_read_crc(t.offset + done, BUF(WEIGHTS), n);
                if (n == tile) {   // a full tile: its tail and the tail's check word to the PSRAM
                    uint8_t* tail = (uint8_t*)BUF(WEIGHTS) + tile - p->psram_tail;
                    *check_word(tail, p->psram_tail) = psram_check(tail, p->psram_tail, to);
                    psram_write(to, tail, p->psram_tail + PSRAM_CHECK_BYTES);
                    to += p->psram_tail + PSRAM_CHECK_BYTES;
                }
                done += n;
            }
            if (crc_ok(attempt, i, &t, crc_value())) break;
        }
    }
#endif
}

static void load_resident(void) {
    for (uint32_t i = 0; i < TENSOR_COUNT; i++) {
        uint32_t offset = TENSOR_PLAN[i].resident_offset;
        if (offset == NOT_RESIDENT) continue;
        TensorEntry t;
        read_tensor_entry(i, &t, 0);
        if (offset + t.size > BUF_RESIDENT_OFFSET + BUF_RESIDENT_BYTES) {   // the image is not the plan's
            board_exit(EXIT_BAD_TENSOR_ENTRY, i, offsetof(TensorEntry, size), t.size);
        }
        for (uint32_t attempt = 0;; attempt++) {
            crc_begin();
            flash_read_crc(t.offset, arena + offset, t.size);
            if (crc_ok(attempt, i, &t, crc_value())) break;
        }
    }
}

// dst = a whole vector tensor (gain or bias) in `role`: from SRAM if resident, else from
// flash, CRC-checked.
static void load_vector(uint32_t stage, const StageEntry* s, uint32_t role, float* dst) {
    TensorEntry t;
    uint32_t index = open_tensor(stage, s, role, &t);
    const float* kept = (const float*)resident(index);
    if (kept) {
        for (uint32_t k = 0; k < t.cols; k++) dst[k] = kept[k];
        return;
    }
#if RUNTIME_XIP
    trace_xip(t.offset, t.size);         // read in place; checked at boot
    const float* src = (const float*)(const void*)(flash_mapped() + t.offset);
    for (uint32_t k = 0; k < t.size / F32; k++) dst[k] = src[k];
#elif VERIFY_AT_BOOT
    flash_read(t.offset, dst, t.size);   // checked at boot
#else
    for (uint32_t attempt = 0;; attempt++) {
        if (attempt) open_tensor(stage, s, role, &t);   // read again, its entry too (its offset, its CRC)
        crc_begin();
        flash_read_crc(t.offset, dst, t.size);
        if (crc_ok(attempt, index, &t, crc_value())) break;
    }
#endif
}

// A matrix [rows, cols] streamed through the weight tile buffers, tile_rows rows at a time:
//   MatrixStream m; matrix_open(&m, ...);
//   while (matrix_next_tile(&m)) { use m.buf = rows m.row .. m.row + m.n - 1 }
//   matrix_close(&m);   // the blob's CRC, over all its tiles
//
// Double-buffered (WEIGHT_BUFFERS 2): the DMA fills one buffer while the CPU computes on
// the other. matrix_open starts tile 0; each matrix_next_tile waits for the tile in flight,
// makes it the current one and starts the next tile into the buffer the previous tile has
// just freed. So the flash streams tile i + 1 while tile i is computed, and a matrix costs
// about io(tile 0) + sum of max(io(tile i + 1), compute(tile i)) + compute(last tile)
// instead of the sum of all (docs/runtime.md). The tiles are read in order, one transfer
// at a time, so the CRC unit still sees the blob's bytes in order.
typedef struct {
    TensorEntry t;
    uint32_t index;       // in the tensor table
    uint32_t tile_rows;   // rows per tile, from the plan
    uint32_t row_bytes;   // in flash and in the tile (int8: the row's values and its scale)
    uint32_t row;         // first row of the current tile
    uint32_t n;           // rows in the current tile (the last one may be short)
    float* buf;           // the current tile
    float* spare;         // the other buffer: where the next tile is streaming in
    const uint8_t* kept;  // the whole matrix, when resident in SRAM (no streaming)
} MatrixStream;

#if WEIGHT_BUFFERS >= 2
#define DOUBLE_BUFFERED 1
_Static_assert(BUF_WEIGHTS_NEXT_BYTES >= BUF_WEIGHTS_BYTES, "the two weight tile buffers");
#else
#define DOUBLE_BUFFERED 0
#endif

static uint32_t tile_rows_from(const MatrixStream* m, uint32_t row) {
    return m->t.rows - row < m->tile_rows ? m->t.rows - row : m->tile_rows;
}

// Start the DMA of the tile that begins at `row` into m->spare (nothing past the last row).
// A full tile of a tensor in the PSRAM tier comes in two reads at once: its tail (and the
// tail's check word, just past the tile) from the PSRAM, the rest from the flash, each by its
// own DMA (the flash's bytes checked at boot, the tail on arrival: tier_tail_check).
static int tier_tile(const MatrixStream* m, uint32_t row) {
    return TENSOR_PLAN[m->index].psram_offset != NOT_RESIDENT && m->t.rows - row >= m->tile_rows;
}

static uint32_t tier_tail_addr(const MatrixStream* m, uint32_t row) {
    const TensorPlan* p = &TENSOR_PLAN[m->index];
    return p->psram_offset + row / m->tile_rows * (p->psram_tail + PSRAM_CHECK_BYTES);
}

static void matrix_fetch(MatrixStream* m, uint32_t row) {
    if (row >= m->t.rows) return;
    uint32_t bytes = tile_rows_from(m, row) * m->row_bytes;
    if (tier_tile(m, row)) {
        uint32_t tail = TENSOR_PLAN[m->index].psram_tail;
        psram_read_start(tier_tail_addr(m, row), (uint8_t*)m->spare + bytes - tail, tail + PSRAM_CHECK_BYTES);
        bytes -= tail;
        if (bytes == 0) return;
    }
#if VERIFY_AT_BOOT
    flash_read_start(m->t.offset + row * m->row_bytes, m->spare, bytes);
#else
    flash_read_crc_start(m->t.offset + row * m->row_bytes, m->spare, bytes);
#endif
}

// Open the matrix in `role` (a ROLE_* of the stage's kind), tiled as the plan says.
static void matrix_open(MatrixStream* m, uint32_t stage, const StageEntry* s, uint32_t role) {
    m->index = open_tensor(stage, s, role, &m->t);
    m->row_bytes = ROLE_SPEC[s->kind][role].row_bytes;
    m->tile_rows = TENSOR_PLAN[m->index].tile_rows;
    m->row = 0;
    m->n = 0;
    m->buf = BUF(WEIGHTS);
#if DOUBLE_BUFFERED
    m->spare = BUF(WEIGHTS_NEXT);
#else
    m->spare = BUF(WEIGHTS);
#endif
    m->kept = resident(m->index);
#if RUNTIME_XIP
    m->kept = flash_mapped() + m->t.offset;   // every tile read in place (checked at boot)
    return;
#endif
    if (m->kept) return;   // checked at boot; its tiles are read in place
#if !VERIFY_AT_BOOT
    crc_begin();   // nothing else may feed this CRC (the PSRAM tier exists only with VERIFY_AT_BOOT)
#endif
#if DOUBLE_BUFFERED
    matrix_fetch(m, 0);   // tile 0 streams in while the caller prepares its input
#endif
}

// The tile at m->row has landed in m->buf: when its tail came from the PSRAM, check it
// against its check word, and read it again once if it fails (a transient error); a second
// failure stops the run naming the tensor and the tile.
static void tier_tail_check(MatrixStream* m) {
    if (!tier_tile(m, m->row)) return;
    uint32_t tail = TENSOR_PLAN[m->index].psram_tail, at = tier_tail_addr(m, m->row);
    uint8_t* p = (uint8_t*)m->buf + m->tile_rows * m->row_bytes - tail;
    for (uint32_t attempt = 0;; attempt++) {
        uint32_t computed = psram_check(p, tail, at);
        if (computed == *check_word(p, tail)) return;
        if (attempt) board_exit(EXIT_BAD_TIER_TAIL, m->index, m->row / m->tile_rows, computed);
        trace_crc_retry(CRC_RETRY_TIER);
        psram_read(at, p, tail + PSRAM_CHECK_BYTES);
    }
}

static int matrix_next_tile(MatrixStream* m) {
    m->row += m->n;
    if (m->row >= m->t.rows) return 0;
    m->n = tile_rows_from(m, m->row);
    if (m->kept) {   // the same tile layout as in flash, already in SRAM (or mapped)
        m->buf = (float*)(uintptr_t)(m->kept + m->row * m->row_bytes);
#if RUNTIME_XIP
        trace_xip(m->t.offset + m->row * m->row_bytes, m->n * m->row_bytes);
#endif
        return 1;
    }
#if DOUBLE_BUFFERED
    flash_wait();                      // tile m->row is in m->spare
    psram_wait();
    float* ready = m->spare;
    m->spare = m->buf;                 // the previous tile's buffer: free since its compute ended
    m->buf = ready;
    matrix_fetch(m, m->row + m->n);    // the next tile streams in while this one is computed
#else
    matrix_fetch(m, m->row);
    flash_wait();
    psram_wait();
#endif
    tier_tail_check(m);
    return 1;
}

// A forward pass in which a streamed blob failed its CRC: its stage computed with the bytes
// read, so the pass is run again from its first stage (forward()); in that second pass
// (retry_pass) a failure ends the run.
static int pass_failed;
static uint32_t retry_pass;

static void matrix_close(MatrixStream* m) {
    if (!m->kept && !VERIFY_AT_BOOT && !RUNTIME_XIP) {
        if (!crc_ok(retry_pass, m->index, &m->t, crc_value())) pass_failed = 1;
    }
}

// The input vector of a matrix-vector product. int8 builds quantize it once per matrix
// (compiler/quantize.py): one scale for the vector, its int8 values in BUF(XQ).
typedef struct {
    const float* f;       // (cols,)
    const int8_t* q;      // (cols,) int8 builds only
    const uint32_t* xu;   // q unpacked (unpack_i8), once per matrix: int8 builds only
    float scale;
} Input;

static Input input(const float* x, uint32_t cols, uint32_t slot) {
    Input in = {x, 0, 0, 0.0f};
    (void)cols;   // fp32 builds read x as it is
    (void)slot;
#if WEIGHTS_INT8
    int8_t* q = (int8_t*)(BUF_ADDR(XQ) + slot * XQ_SLOT);
    uint32_t* xu = (uint32_t*)(void*)(BUF_ADDR(XQ) + slot * XQ_SLOT + XU_OFFSET);
    quantize_vector_i8(q, &in.scale, x, (int)cols);
    unpack_i8(xu, q, (int)cols);
    in.q = q;
    in.xu = xu;
#endif
    return in;
}

// y (m->n,) = the current tile's rows . x (+ b): float32 dot products, or exact int32 ones
// dequantized with the row's scale times the input's.
static void tile_product(const MatrixStream* m, float* y, const float* b, const Input* in) {
#if WEIGHTS_INT8
    const float* scales = m->buf;
    const int8_t* rows = (const int8_t*)(m->buf + m->n);
    matvec_rows_i8(y, rows, scales, b, in->q, in->xu, in->scale, (int)m->n, (int)m->t.cols);
#else
    matvec_rows(y, m->buf, b, in->f, (int)m->n, (int)m->t.cols);
#endif
}

// A chunk of consecutive positions processed together (PREFILL_CHUNK at most): each stage
// runs over all of them before the next stage, so every weight tile streams once per chunk.
typedef struct {
    uint32_t pos0, n;                 // positions pos0 .. pos0 + n - 1
    uint32_t tokens[PREFILL_CHUNK];
} Chunk;

// The current tile's rows times every position's input: y_p (m->n,) for p < n. int8 with
// more than one position unpacks each group of four rows once for all of them.
static void tile_products(const MatrixStream* m, float* const* y, const float* b, const Input* in, uint32_t n) {
#if WEIGHTS_INT8
    if (n > 1) {
        const int8_t* qx[PREFILL_CHUNK];
        const uint32_t* xu[PREFILL_CHUNK];
        float sx[PREFILL_CHUNK];
        for (uint32_t p = 0; p < n; p++) {
            qx[p] = in[p].q;
            xu[p] = in[p].xu;
            sx[p] = in[p].scale;
        }
        matvec_rows_i8_batch(y, (const int8_t*)(m->buf + m->n), m->buf, b, qx, xu, sx, (int)n, (int)m->n,
                             (int)m->t.cols, (uint32_t*)(void*)BUF_ADDR(WU));
        return;
    }
#endif
    for (uint32_t p = 0; p < n; p++) tile_product(m, y[p], b, &in[p]);
}

// For each position p of the chunk: x_p += W in_p + b, tile by tile, in the reference's
// order x + (in @ W + b); the tile's product goes through h_p, which no projection back into
// the residual stream reads.
static void residual_product(MatrixStream* m, const float* b, const Input* in, const Chunk* c) {
    float* y[PREFILL_CHUNK];
    while (matrix_next_tile(m)) {
        for (uint32_t p = 0; p < c->n; p++) y[p] = H_(p) + m->row;
        tile_products(m, y, b + m->row, in, c->n);
        for (uint32_t p = 0; p < c->n; p++) add_inplace(X_(p) + m->row, H_(p) + m->row, (int)m->n);
    }
}

// ----------------------------------------------------------------------------
// the stages: each reads its weights, transforms the activations, and is done

// embed: x = wte[token] + wpe[pos]. Two single rows are read, each checked against its entry
// in its tensor's row CRC table (the blob's CRC covers the whole blob, which the embedding
// never reads). The XIP runtime reads them in place, checked at boot with their blobs.
typedef struct {
    uint32_t flash_addr;
    void* dst;
    uint32_t len;
} Piece;

// Row `row` of tensor `index`, in one or two pieces (int8: its scale, then its values), read
// through the CRC unit and compared with its row CRC: 1 when they match. A first mismatch
// (attempt 0) tells the board and returns 0, and the caller reads the row again from its
// tensor entry on; a second ends the run.
static int read_row(uint32_t index, const TensorEntry* t, uint32_t row, const Piece* p, uint32_t n, uint32_t attempt) {
#if RUNTIME_XIP
    (void)index;
    (void)t;
    (void)row;
    (void)attempt;
    for (uint32_t k = 0; k < n; k++) {
        trace_xip(p[k].flash_addr, p[k].len);
        const uint8_t* src = flash_mapped() + p[k].flash_addr;
        for (uint32_t b = 0; b < p[k].len; b++) ((uint8_t*)p[k].dst)[b] = src[b];
    }
    return 1;
#else
    uint32_t stored;
    flash_read(t->row_crcs + row * (uint32_t)sizeof stored, &stored, sizeof stored);
    crc_begin();
    for (uint32_t k = 0; k < n; k++) flash_read_crc(p[k].flash_addr, p[k].dst, p[k].len);
    uint32_t computed = crc_value();
    if (computed == stored) return 1;
    if (attempt) board_exit(EXIT_BAD_ROW_CRC, index, row, computed);
    trace_crc_retry(index);
    return 0;
#endif
}

// x = wte[token] (dequantized) and h = wpe[pos] for one position: 0 when a row failed its
// check the first time (attempt 0), to be read again from the tensor entries on (a flipped bit
// in an entry's offset or row_crcs fails the row's check too).
static int embed_rows(uint32_t i, const StageEntry* s, uint32_t token, uint32_t pos, uint32_t slot, uint32_t attempt) {
    float* x = X_(slot);
    TensorEntry wte, wpe;
    uint32_t wte_index = open_tensor(i, s, ROLE_EMBED_WTE, &wte);
    uint32_t wpe_index = open_tensor(i, s, ROLE_EMBED_WPE, &wpe);
#if WEIGHTS_INT8
    // wte is the head's matrix, stored in the head's tiles: find the row's tile, then its
    // scale and its int8 values; x = float(q) * scale, as the reference dequantizes it
    uint32_t tile_rows = TENSOR_PLAN[wte_index].tile_rows;
    uint32_t j = token % tile_rows, first = token - j;
    uint32_t n = VOCAB_SIZE - first < tile_rows ? VOCAB_SIZE - first : tile_rows;
    uint32_t tile_offset = wte.offset + first * ROLE_SPEC[STAGE_EMBED][ROLE_EMBED_WTE].row_bytes;
    float scale;
    int8_t* q = (int8_t*)(BUF_ADDR(XQ) + slot * XQ_SLOT);
    const uint8_t* kept = resident(wte_index);
    if (kept) {
        const uint8_t* t = kept + (tile_offset - wte.offset);
        scale = *(const float*)(const void*)(t + j * F32);
        for (uint32_t d = 0; d < N_EMBD; d++) q[d] = (int8_t)t[n * F32 + j * N_EMBD + d];
    } else {
        Piece row[2] = {{tile_offset + j * F32, &scale, F32}, {tile_offset + n * F32 + j * N_EMBD, q, N_EMBD}};
        if (!read_row(wte_index, &wte, token, row, 2, attempt)) return 0;
    }
    for (uint32_t d = 0; d < N_EMBD; d++) x[d] = (float)q[d] * scale;
#else
    const float* kept = (const float*)resident(wte_index);
    if (kept) {
        for (uint32_t d = 0; d < N_EMBD; d++) x[d] = kept[(size_t)token * N_EMBD + d];
    } else {
        Piece row = {wte.offset + token * N_EMBD * F32, x, N_EMBD * F32};
        if (!read_row(wte_index, &wte, token, &row, 1, attempt)) return 0;
    }
#endif
    Piece row = {wpe.offset + pos * N_EMBD * F32, H_(slot), N_EMBD * F32};
    return read_row(wpe_index, &wpe, pos, &row, 1, attempt);
}

static void embed_one(uint32_t i, const StageEntry* s, uint32_t token, uint32_t pos, uint32_t slot) {
    for (uint32_t attempt = 0; !embed_rows(i, s, token, pos, slot, attempt); attempt++) {
    }
    add_inplace(X_(slot), H_(slot), N_EMBD);
}

static void stage_embed(uint32_t i, const StageEntry* s, const Chunk* c) {
    for (uint32_t p = 0; p < c->n; p++) embed_one(i, s, c->tokens[p], c->pos0 + p, p);
}

// ln_1, ln_2: h = layernorm(x) * gain + bias
static void stage_layernorm(uint32_t i, const StageEntry* s, const Chunk* c) {
    float* gain = BUF(PARAMS);
    float* bias = BUF(PARAMS) + N_EMBD;
    load_vector(i, s, ROLE_LN_1_GAIN, gain);
    load_vector(i, s, ROLE_LN_1_BIAS, bias);
    for (uint32_t p = 0; p < c->n; p++) layernorm(H_(p), X_(p), gain, bias, N_EMBD, LN_EPS);
}

// attn_qkv: qkv = W h + b, W [3 N_EMBD, N_EMBD]
static void stage_attn_qkv(uint32_t i, const StageEntry* s, const Chunk* c) {
    float* b = BUF(PARAMS);
    load_vector(i, s, ROLE_ATTN_QKV_B, b);   // the bias first: one blob in the CRC unit at a time
    MatrixStream m;
    matrix_open(&m, i, s, ROLE_ATTN_QKV_W);
    Input in[PREFILL_CHUNK];
    for (uint32_t p = 0; p < c->n; p++) in[p] = input(H_(p), N_EMBD, p);
    float* y[PREFILL_CHUNK];
    while (matrix_next_tile(&m)) {
        for (uint32_t p = 0; p < c->n; p++) y[p] = QKV_(p) + m.row;
        tile_products(&m, y, b + m.row, in, c->n);
    }
    matrix_close(&m);
}

#if !KV_IN_SRAM || KV_INT8
// The KV cache as rows: [layer][keys, values][head][position] rows of KV_ROW_BYTES (fp32:
// HEAD_DIM floats; int8: a float32 scale, then HEAD_DIM int8; in PSRAM, then a check word),
// N_CTX positions per head, in PSRAM from address 0 or, int8 in SRAM, in the arena's kv
// buffer. One head's rows 0..pos are contiguous, so a block of KV_BLOCK_POSITIONS of them is
// one read.
_Static_assert(2ull * N_LAYER * N_HEAD * N_CTX * KV_ROW_BYTES <= 0xFFFFFFFFull, "KV addresses are 32-bit");

enum { KV_KEYS_ROW = 0, KV_VALUES_ROW = 1 };   // the `values` argument below

static uint32_t kv_row_offset(uint32_t layer, uint32_t values, uint32_t head, uint32_t pos) {
    return (((layer * 2u + values) * N_HEAD + head) * N_CTX + pos) * KV_ROW_BYTES;
}

// Store one head's key or value for position pos: as floats, or quantized (quantize.py
// quantize_vector: one scale per position and head).
static void kv_store(uint32_t layer, uint32_t values, uint32_t head, uint32_t pos, const float* x) {
#if KV_INT8
#if KV_IN_SRAM
    uint8_t* row = (uint8_t*)BUF_ADDR(KV) + kv_row_offset(layer, values, head, pos);
#else
    uint8_t* row = (uint8_t*)BUF_ADDR(KV_ROWS);   // free between attention passes
#endif
    float scale;
    quantize_vector_i8((int8_t*)(row + F32), &scale, x, HEAD_DIM);
    *(float*)(void*)row = scale;
#else   // fp32, in PSRAM: the row is put together in the block buffer (free between loads)
    uint8_t* row = (uint8_t*)BUF_ADDR(KV_BLOCK);
    for (uint32_t d = 0; d < HEAD_DIM; d++) ((float*)(void*)row)[d] = x[d];
#endif
#if !KV_IN_SRAM
    uint32_t at = kv_row_offset(layer, values, head, pos);
    *check_word(row, KV_ROW_BYTES - PSRAM_CHECK_BYTES) = psram_check(row, KV_ROW_BYTES - PSRAM_CHECK_BYTES, at);
    psram_write(at, row, KV_ROW_BYTES);
#endif
}

#if !KV_IN_SRAM
// Check rows t..t+n-1 of one head, read from the PSRAM into `rows`, against their check
// words. A block with a failing row is read again once (a transient error passes the second
// time); a second failure stops the run naming the row. Inlined into its two callers: it is
// on attention's path, a call per block for every head and layer.
static inline __attribute__((always_inline)) void kv_check(uint32_t layer, uint32_t values, uint32_t head,
                                                           uint32_t t, uint32_t n, uint8_t* rows) {
    uint32_t at = kv_row_offset(layer, values, head, t);
    for (uint32_t attempt = 0;; attempt++) {
        uint32_t r = 0, computed = 0;
        for (; r < n; r++) {
            uint8_t* row = rows + r * KV_ROW_BYTES;
            computed = psram_check(row, KV_ROW_BYTES - PSRAM_CHECK_BYTES, at + r * KV_ROW_BYTES);
            if (computed != *check_word(row, KV_ROW_BYTES - PSRAM_CHECK_BYTES)) break;
        }
        if (r == n) return;
        if (attempt) board_exit(EXIT_BAD_KV_ROW, (layer * 2u + values) * N_HEAD + head, t + r, computed);
        trace_crc_retry(CRC_RETRY_KV);
        psram_read(at, rows, n * KV_ROW_BYTES);
    }
}
#endif

static uint32_t kv_block_size(uint32_t t, uint32_t n_pos) {
    return n_pos - t < KV_BLOCK_POSITIONS ? n_pos - t : KV_BLOCK_POSITIONS;
}
#endif

#if KV_INT8
// One head's key or value rows 0..n_pos-1 a block at a time, as stored (int8 with their
// scales): in SRAM, where they are; in PSRAM, read into the two halves of kv_rows in turn,
// the next block's read running while this one is computed with.
typedef struct {
    uint32_t layer, values, head, n_pos;
    uint32_t t, n;          // the block in hand: rows t..t+n-1
    const uint8_t* rows;
} KvBlocks;

#if !KV_IN_SRAM
static uint8_t* kv_half(uint32_t t) {
    return (uint8_t*)BUF_ADDR(KV_ROWS) + (t / KV_BLOCK_POSITIONS % 2) * (KV_BLOCK_POSITIONS * KV_ROW_BYTES);
}
#endif

// Transposed value blocks. A value row is summed column by column against the block's
// weights, which with rows as stored takes an SMLAxy a value (kernels_int8.c
// attention_accumulate_i8). In the PSRAM, once a block of KV_BLOCK_POSITIONS value rows is
// complete, it is rewritten transposed in the same bytes: row r keeps position t0 + r's
// scale and its check word's place, and holds the values of columns 2r and 2r + 1 at the
// block's positions (HEAD_DIM = 2 KV_BLOCK_POSITIONS: the GPT-2 family). Each column is then
// a dot product with the weights, SMLAD two values at a time (attention_accumulate_cols_i8);
// the integer sums are the same, and so are the bits. The block being filled stays as rows.
// The plan decides (compiler/plan.py KvPlan.values_transposed: KV_VALUES_TRANSPOSED).
_Static_assert(!KV_VALUES_TRANSPOSED || (KV_INT8 && !KV_IN_SRAM && HEAD_DIM == 2 * KV_BLOCK_POSITIONS),
               "transposed value blocks: int8 in PSRAM, two columns per row");

#if KV_VALUES_TRANSPOSED
static void kv_transpose_values(uint32_t layer, uint32_t head, uint32_t t0) {
    uint8_t* rows = kv_half(0);                       // free between attention passes
    uint8_t* cols = kv_half(KV_BLOCK_POSITIONS);
    uint32_t at = kv_row_offset(layer, KV_VALUES_ROW, head, t0);
    psram_read(at, rows, KV_BLOCK_POSITIONS * KV_ROW_BYTES);
    kv_check(layer, KV_VALUES_ROW, head, t0, KV_BLOCK_POSITIONS, rows);
    for (uint32_t r = 0; r < KV_BLOCK_POSITIONS; r++) {
        uint8_t* out = cols + r * KV_ROW_BYTES;
        *(float*)(void*)out = *(const float*)(const void*)(rows + r * KV_ROW_BYTES);
        for (uint32_t half = 0; half < 2u; half++) {
            const uint8_t* column = rows + F32 + 2u * r + half;
            for (uint32_t t = 0; t < KV_BLOCK_POSITIONS; t++)
                out[F32 + half * KV_BLOCK_POSITIONS + t] = column[t * KV_ROW_BYTES];
        }
        *check_word(out, KV_ROW_BYTES - PSRAM_CHECK_BYTES) =
            psram_check(out, KV_ROW_BYTES - PSRAM_CHECK_BYTES, at + r * KV_ROW_BYTES);
    }
    psram_write(at, cols, KV_BLOCK_POSITIONS * KV_ROW_BYTES);
}
#endif

static void kv_blocks_open(KvBlocks* b, uint32_t layer, uint32_t values, uint32_t head, uint32_t n_pos) {
    *b = (KvBlocks){layer, values, head, n_pos, 0, 0, 0};
#if !KV_IN_SRAM
    psram_read_start(kv_row_offset(layer, values, head, 0), kv_half(0), kv_block_size(0, n_pos) * KV_ROW_BYTES);
#endif
}

static int kv_blocks_next(KvBlocks* b) {
    b->t += b->n;
    if (b->t >= b->n_pos) return 0;
    b->n = kv_block_size(b->t, b->n_pos);
#if KV_IN_SRAM
    b->rows = (const uint8_t*)BUF_ADDR(KV) + kv_row_offset(b->layer, b->values, b->head, b->t);
#else
    uint8_t* rows = kv_half(b->t);
    psram_wait();                                   // this block is in
    uint32_t next = b->t + b->n;
    if (next < b->n_pos)
        psram_read_start(kv_row_offset(b->layer, b->values, b->head, next), kv_half(next),
                         kv_block_size(next, b->n_pos) * KV_ROW_BYTES);
    kv_check(b->layer, b->values, b->head, b->t, b->n, rows);
    b->rows = rows;
#endif
    return 1;
}

// softmax(q k^T / sqrt(HEAD_DIM)) v for one head on the int8 rows (quantize.py
// attention_int8): the query quantized to int16, the scores its exact integer products with
// the keys; then each value row's scale folded into its exponential, each block's weights
// quantized to int16 for an exact integer sum over the block's rows, and the softmax's
// division done once per output instead of once per position.
static void attention_head_i8(float* out, const float* q, uint32_t layer, uint32_t head, uint32_t n_pos) {
    int16_t qh[HEAD_DIM];
    uint32_t qu[HEAD_DIM / 2 + 2] __attribute__((aligned(8)));
    float sq, scale = attention_scale(HEAD_DIM);
    float* scores = BUF(SCORES);
    quantize_query_i16(qh, qu, &sq, q, HEAD_DIM);
    KvBlocks b;
    kv_blocks_open(&b, layer, KV_KEYS_ROW, head, n_pos);
    while (kv_blocks_next(&b))
        attention_scores_i8(scores + b.t, b.rows, KV_ROW_BYTES, (int)b.n, qh, qu, sq, HEAD_DIM, scale);
    float sum = softmax_exps(scores, (int)n_pos);
    int16_t wq[KV_BLOCK_POSITIONS] __attribute__((aligned(4)));
    for (uint32_t d = 0; d < HEAD_DIM; d++) out[d] = 0.0f;
    kv_blocks_open(&b, layer, KV_VALUES_ROW, head, n_pos);
    while (kv_blocks_next(&b)) {
#if KV_VALUES_TRANSPOSED
        if (b.n == KV_BLOCK_POSITIONS) {   // complete: stored transposed
            uint32_t wu[KV_BLOCK_POSITIONS / 2];
            attention_accumulate_cols_i8(out, scores + b.t, b.rows, KV_ROW_BYTES, (int)b.n, wq, wu);
            continue;
        }
#endif
        attention_accumulate_i8(out, scores + b.t, b.rows, KV_ROW_BYTES, (int)b.n, HEAD_DIM, wq);
    }
    float inv = 1.0f / sum;
    for (uint32_t d = 0; d < HEAD_DIM; d++) out[d] = out[d] * inv;
}

#elif !KV_IN_SRAM
// fp32 in PSRAM: rows t..t+n-1 of one head read into BUF(KV_BLOCK) with their check words,
// checked, then packed to HEAD_DIM floats a row.
static const float* kv_load(uint32_t layer, uint32_t values, uint32_t head, uint32_t t, uint32_t n) {
    float* out = BUF(KV_BLOCK);
    psram_read(kv_row_offset(layer, values, head, t), out, n * KV_ROW_BYTES);
    kv_check(layer, values, head, t, n, (uint8_t*)out);
    for (uint32_t r = 1; r < n; r++) {   // each row moves down over the check words before it
        const float* from = (const float*)(const void*)((const uint8_t*)out + r * KV_ROW_BYTES);
        for (uint32_t d = 0; d < HEAD_DIM; d++) out[r * HEAD_DIM + d] = from[d];
    }
    return out;
}

// attention_head in pieces over blocks of rows, in the same order, so the result has the
// bits of the cache in SRAM: scores a block of keys at a time, then the values.
static void attention_head_blocks(float* out, const float* q, uint32_t layer, uint32_t head, uint32_t n_pos) {
    float* scores = BUF(SCORES);
    float scale = attention_scale(HEAD_DIM);
    for (uint32_t t = 0; t < n_pos; t += KV_BLOCK_POSITIONS) {
        uint32_t n = kv_block_size(t, n_pos);
        attention_scores(scores + t, q, kv_load(layer, KV_KEYS_ROW, head, t, n), (int)n, HEAD_DIM, HEAD_DIM, scale);
    }
    softmax(scores, (int)n_pos);
    for (uint32_t d = 0; d < HEAD_DIM; d++) out[d] = 0.0f;
    for (uint32_t t = 0; t < n_pos; t += KV_BLOCK_POSITIONS) {
        uint32_t n = kv_block_size(t, n_pos);
        attention_accumulate(out, scores + t, kv_load(layer, KV_VALUES_ROW, head, t, n), (int)n, HEAD_DIM, HEAD_DIM);
    }
}
#endif

// attn_core: append this position's key and value to the layer's KV cache, then each head
// attends over positions 0..pos: att = softmax(q k^T / sqrt(HEAD_DIM)) v.
// An fp32 cache in PSRAM runs the same kernels (kernels.h: attention_head in pieces) over
// blocks of rows, in the same order, so the result has the bits of the cache in SRAM; an
// int8 cache runs the int8 kernels on its rows as stored (attention_head_i8).
static void attn_one(const StageEntry* s, uint32_t pos, uint32_t slot) {
    const float* q = QKV_(slot);
    const float* k = QKV_(slot) + N_EMBD;
    const float* v = QKV_(slot) + 2 * N_EMBD;
    float* att = ATT_(slot);
#if KV_IN_SRAM && !KV_INT8
    float* keys = KV_KEYS(s->layer);       // (N_CTX, N_EMBD): row t = every head's key at t
    float* values = KV_VALUES(s->layer);
    for (uint32_t d = 0; d < N_EMBD; d++) {
        keys[(size_t)pos * N_EMBD + d] = k[d];
        values[(size_t)pos * N_EMBD + d] = v[d];
    }
    for (uint32_t head = 0; head < N_HEAD; head++) {
        uint32_t c = head * HEAD_DIM;      // the head's columns in q, the cache rows and att
        attention_head(att + c, q + c, keys + c, values + c, (int)pos + 1, HEAD_DIM, N_EMBD,
                       BUF(SCORES));
    }
#else
    for (uint32_t head = 0; head < N_HEAD; head++) {   // row pos of every head: k, then v
        uint32_t c = head * HEAD_DIM;
        kv_store(s->layer, KV_KEYS_ROW, head, pos, k + c);
        kv_store(s->layer, KV_VALUES_ROW, head, pos, v + c);
#if KV_VALUES_TRANSPOSED
        if ((pos + 1u) % KV_BLOCK_POSITIONS == 0) kv_transpose_values(s->layer, head, pos + 1u - KV_BLOCK_POSITIONS);
#endif
    }
    for (uint32_t head = 0; head < N_HEAD; head++) {
        uint32_t c = head * HEAD_DIM;
#if KV_INT8
        attention_head_i8(att + c, q + c, s->layer, head, pos + 1);
#else
        attention_head_blocks(att + c, q + c, s->layer, head, pos + 1);
#endif
    }
#endif
}

// The chunk's positions in order: each appends its key and value before it attends, so
// position p sees positions 0..p and no later one (causal, as one position at a time).
static void stage_attn_core(uint32_t i, const StageEntry* s, const Chunk* c) {
    (void)i;   // read_stage: its layer is the plan's
    for (uint32_t p = 0; p < c->n; p++) attn_one(s, c->pos0 + p, p);
}

// attn_proj: x += W att + b, W [N_EMBD, N_EMBD]
static void stage_attn_proj(uint32_t i, const StageEntry* s, const Chunk* c) {
    float* b = BUF(PARAMS);
    load_vector(i, s, ROLE_ATTN_PROJ_B, b);
    MatrixStream m;
    matrix_open(&m, i, s, ROLE_ATTN_PROJ_W);
    Input in[PREFILL_CHUNK];
    for (uint32_t p = 0; p < c->n; p++) in[p] = input(ATT_(p), N_EMBD, p);
    residual_product(&m, b, in, c);
    matrix_close(&m);
}

// mlp: hidden = gelu(W_fc h + b_fc), W_fc [4 N_EMBD, N_EMBD];
//      x += W_proj hidden + b_proj, W_proj [N_EMBD, 4 N_EMBD]
// Each bias is loaded just before its matrix: the params buffer holds one vector at a time.
static void stage_mlp(uint32_t i, const StageEntry* s, const Chunk* c) {
    float* b = BUF(PARAMS);
    MatrixStream m;
    Input in[PREFILL_CHUNK];
    load_vector(i, s, ROLE_MLP_B_FC, b);
    matrix_open(&m, i, s, ROLE_MLP_W_FC);
    for (uint32_t p = 0; p < c->n; p++) in[p] = input(H_(p), N_EMBD, p);
    float* y[PREFILL_CHUNK];
    while (matrix_next_tile(&m)) {
        for (uint32_t p = 0; p < c->n; p++) y[p] = HIDDEN_(p) + m.row;
        tile_products(&m, y, b + m.row, in, c->n);
        // GELU is elementwise: each tile's outputs as soon as they are final, while the next
        // tile streams in, so the flash is not left idle for a whole GELU pass after the last
        for (uint32_t p = 0; p < c->n; p++) gelu_tanh(y[p], (int)m.n);
    }
    matrix_close(&m);

    load_vector(i, s, ROLE_MLP_B_PROJ, b);
    matrix_open(&m, i, s, ROLE_MLP_W_PROJ);
    for (uint32_t p = 0; p < c->n; p++) in[p] = input(HIDDEN_(p), 4 * N_EMBD, p);
    residual_product(&m, b, in, c);
    matrix_close(&m);
}

// head: h = layernorm(x) (ln_f); logits = wte h, one vocabulary tile at a time, each tile
// offered to the running top-k and then overwritten: the whole logits vector never exists.
// Only the chunk's last position: nobody reads the logits of the others.
static void stage_head(uint32_t i, const StageEntry* s, const Chunk* c) {
    uint32_t last = c->n - 1;
    float* gain = BUF(PARAMS);
    float* bias = BUF(PARAMS) + N_EMBD;
    load_vector(i, s, ROLE_HEAD_GAIN, gain);
    load_vector(i, s, ROLE_HEAD_BIAS, bias);
    layernorm(H_(last), X_(last), gain, bias, N_EMBD, LN_EPS);

    // greedy is top-k with k = 1: the largest logit, the lower id on ties
    topk_init(TOPK, request.temperature == 0.0f ? 1 : (int)request.top_k);
    MatrixStream m;
    matrix_open(&m, i, s, ROLE_HEAD_WTE);
    Input in = input(H_(last), N_EMBD, last);
    while (matrix_next_tile(&m)) {
        tile_product(&m, BUF(LOGITS), NULL, &in);
        topk_push(TOPK, BUF(LOGITS), (int)m.row, (int)m.n);
        if (request.flags & MAILBOX_FLAG_DUMP_LOGITS) trace_logits(BUF(LOGITS), m.row, m.n);
    }
    matrix_close(&m);   // checked before the token is chosen from these logits
}

// ----------------------------------------------------------------------------
// one forward pass: the image's stages in order, for a chunk of positions (one when
// decoding)

// A streamed blob that fails its CRC has already been computed with: the pass stops after
// that stage and runs again from the first (every stage writes what it reads next, the KV
// cache rows of these positions included, so a second pass leaves what one good pass would).
static void forward(const Chunk* c, int need_logits) {
    trace_position(c->pos0);
    pass_failed = 0;
    for (retry_pass = 0; retry_pass < 2; retry_pass++) {
        for (uint32_t i = 0; i < header.stage_count && !pass_failed; i++) {
            StageEntry s;
            read_stage(i, &s);
            if (s.kind == STAGE_HEAD && !need_logits) continue;   // nobody reads these logits
            trace_stage(i);
            switch (s.kind) {
            case STAGE_EMBED: stage_embed(i, &s, c); break;
            case STAGE_LN_1:
            case STAGE_LN_2: stage_layernorm(i, &s, c); break;
            case STAGE_ATTN_QKV: stage_attn_qkv(i, &s, c); break;
            case STAGE_ATTN_CORE: stage_attn_core(i, &s, c); break;
            case STAGE_ATTN_PROJ: stage_attn_proj(i, &s, c); break;
            case STAGE_MLP: stage_mlp(i, &s, c); break;
            case STAGE_HEAD: stage_head(i, &s, c); break;
            default: board_exit(EXIT_BAD_STAGE, i, offsetof(StageEntry, kind), s.kind);
            }
        }
        if (!pass_failed) break;
        pass_failed = 0;
    }
    trace_stage(TRACE_IDLE);
}

// ----------------------------------------------------------------------------
// the token: choose it from the top-k, print its bytes

static uint32_t choose(void) {
    if (request.temperature == 0.0f) return (uint32_t)TOPK->idx[0];
    return (uint32_t)sample_topk(TOPK, request.temperature, &rng);
}

// The token table: (VOCAB_SIZE + 1) u32 offsets, then the bytes; token t is
// bytes[off[t] .. off[t+1]). Read in small pieces: a token is rarely longer than 16 bytes.
// The table's CRC is checked at boot, not at each token, so every piece is read twice and
// compared: a transient read error makes them differ, and a third read settles which was
// right (trace_crc_retry); three different reads end the run.
#define TOKEN_PIECE 64u

static int same_bytes(const uint8_t* a, const uint8_t* b, uint32_t n) {
    for (uint32_t k = 0; k < n; k++) {
        if (a[k] != b[k]) return 0;
    }
    return 1;
}

static void read_token_piece(uint32_t token, uint32_t offset, uint8_t* dst, uint32_t len) {
    uint8_t again[TOKEN_PIECE], third[TOKEN_PIECE];
    flash_read(offset, dst, len);
    flash_read(offset, again, len);
    if (same_bytes(dst, again, len)) return;
    trace_crc_retry(CRC_RETRY_SECTION);
    flash_read(offset, third, len);
    if (same_bytes(dst, third, len)) return;
    if (!same_bytes(again, third, len)) board_exit(EXIT_BAD_TOKEN_ENTRY, token, offset, offset + len);
    for (uint32_t k = 0; k < len; k++) dst[k] = again[k];
}

static void print_token(uint32_t token) {
    uint32_t off[2];
    read_token_piece(token, header.tokens_offset + token * 4u, (uint8_t*)off, sizeof off);
    uint32_t bytes = header.tokens_offset + (VOCAB_SIZE + 1) * 4u;
    // inside this token table (check_image: tokens_size holds the offsets), in order
    if (off[0] > off[1] || off[1] > header.tokens_size - (VOCAB_SIZE + 1) * 4u) {
        board_exit(EXIT_BAD_TOKEN_ENTRY, token, off[0], off[1]);
    }
    uint8_t chunk[TOKEN_PIECE];
    for (uint32_t p = off[0]; p < off[1];) {
        uint32_t n = off[1] - p < sizeof chunk ? off[1] - p : (uint32_t)sizeof chunk;
        read_token_piece(token, bytes + p, chunk, n);
        uart_write(chunk, n);
        p += n;
    }
}

// ----------------------------------------------------------------------------
// boot checks: the image, then the request

// The image must be the one this firmware was generated for: its plan id, and so its
// model's shape. Each mismatch ends the run naming the header field (byte offset) in ARG2.
static void expect_field(uint32_t found, uint32_t expected, uint32_t field_offset) {
    if (found != expected) board_exit(EXIT_PLAN_MISMATCH, found, expected, field_offset);
}

// CRC32 of a section of the image, streamed through the CRC unit a weights buffer at a time
// (the XIP runtime has none: the MLP's hidden buffer, free at boot, serves).
#if RUNTIME_XIP
#define SECTION_BUF BUF(HIDDEN)
#define SECTION_BUF_BYTES BUF_HIDDEN_BYTES
#else
#define SECTION_BUF BUF(WEIGHTS)
#define SECTION_BUF_BYTES BUF_WEIGHTS_BYTES
#endif
static uint32_t section_crc(uint32_t offset, uint32_t size) {
    crc_begin();
    for (uint32_t done = 0; done < size;) {
        uint32_t left = size - done;
        uint32_t n = left < SECTION_BUF_BYTES ? left : SECTION_BUF_BYTES;
        flash_read_crc(offset + done, SECTION_BUF, n);
        done += n;
    }
    return crc_value();
}

// A section's CRC (header, tables, token table), read again once if it does not match.
static void check_section(uint32_t offset, uint32_t size, uint32_t stored, uint32_t exit_code) {
    for (uint32_t attempt = 0;; attempt++) {
        uint32_t computed = section_crc(offset, size);
        if (computed == stored) return;
        if (attempt) board_exit(exit_code, stored, computed, 0);
        trace_crc_retry(CRC_RETRY_SECTION);
    }
}

static void check_image(void) {
    // the header: magic, version, then its CRC over the bytes before header_crc (read again
    // once if it does not match)
    uint32_t computed = 0;
    for (uint32_t attempt = 0; attempt < 2; attempt++) {
        if (attempt) trace_crc_retry(CRC_RETRY_SECTION);
        crc_begin();
        flash_read_crc(0, &header, HEADER_CRC_SPAN);
        computed = crc_value();
        flash_read(HEADER_CRC_SPAN, &header.header_crc, sizeof header - HEADER_CRC_SPAN);
        if (header.magic != IMAGE_MAGIC) board_exit(EXIT_BAD_MAGIC, header.magic, IMAGE_MAGIC, 0);
        if (header.version != IMAGE_FORMAT_VERSION) {
            board_exit(EXIT_BAD_VERSION, header.version, IMAGE_FORMAT_VERSION, 0);
        }
        if (header.header_crc == computed) break;
    }
    if (header.header_crc != computed) board_exit(EXIT_BAD_HEADER_CRC, header.header_crc, computed, 0);

    expect_field(header.plan_id, PLAN_ID, offsetof(ImageHeader, plan_id));
    expect_field(header.n_layer, N_LAYER, offsetof(ImageHeader, n_layer));
    expect_field(header.n_head, N_HEAD, offsetof(ImageHeader, n_head));
    expect_field(header.n_embd, N_EMBD, offsetof(ImageHeader, n_embd));
    expect_field(header.n_ctx_model, N_CTX_MODEL, offsetof(ImageHeader, n_ctx_model));
    expect_field(header.n_ctx, N_CTX, offsetof(ImageHeader, n_ctx));
    expect_field(header.vocab_size, VOCAB_SIZE, offsetof(ImageHeader, vocab_size));
    expect_field(header.tensor_count, TENSOR_COUNT, offsetof(ImageHeader, tensor_count));
    expect_field(header.stage_count, STAGE_COUNT, offsetof(ImageHeader, stage_count));
    expect_field(header.header_size, sizeof(ImageHeader), offsetof(ImageHeader, header_size));
    expect_field(header.tables_size, STAGE_COUNT * (uint32_t)sizeof(StageEntry) + TENSOR_COUNT * (uint32_t)sizeof(TensorEntry)
                 + ROW_CRC_TABLES_BYTES, offsetof(ImageHeader, tables_size));
    // the token table holds its offsets (print_token checks each token's bytes against its size)
    if (header.tokens_size < (VOCAB_SIZE + 1) * 4u) {
        expect_field(header.tokens_size, (VOCAB_SIZE + 1) * 4u, offsetof(ImageHeader, tokens_size));
    }
    expect_field(header.dtype, WEIGHTS_INT8 ? DTYPE_INT8_TILED : DTYPE_FP32, offsetof(ImageHeader, dtype));
    union { float f; uint32_t u; } eps_found = {header.ln_eps}, eps_expected = {LN_EPS};
    expect_field(eps_found.u, eps_expected.u, offsetof(ImageHeader, ln_eps));   // float bits

    // the stage and tensor tables, and the token table the text comes from
    check_section(header.tables_offset, header.tables_size, header.tables_crc, EXIT_BAD_TABLES_CRC);
    check_section(header.tokens_offset, header.tokens_size, header.tokens_crc, EXIT_BAD_TOKENS_CRC);
    // the stage table is the plan's, entry for entry (each is checked again as it is read)
    for (uint32_t i = 0; i < STAGE_COUNT; i++) {
        StageEntry s;
        read_stage(i, &s);
    }
}

// A bad setting ends the run naming the mailbox field (its byte offset) and the value.
__attribute__((noreturn)) static void bad_setting(uint32_t field_offset, uint32_t value) {
    board_exit(EXIT_BAD_MAILBOX, field_offset, value, 0);
}

static void read_request(void) {
    uint32_t magic = mailbox_word(MAILBOX_MAGIC_OFFSET);
    if (magic != MAILBOX_MAGIC) bad_setting(MAILBOX_MAGIC_OFFSET, magic);
    Request* r = &request;
    r->n_prompt = mailbox_word(MAILBOX_N_PROMPT_OFFSET);
    r->n_new = mailbox_word(MAILBOX_N_NEW_OFFSET);
    union { uint32_t u; float f; } temperature = {mailbox_word(MAILBOX_TEMPERATURE_OFFSET)};
    r->temperature = temperature.f;
    r->top_k = mailbox_word(MAILBOX_TOP_K_OFFSET);
    r->seed = (uint64_t)mailbox_word(MAILBOX_SEED_HI_OFFSET) << 32 | mailbox_word(MAILBOX_SEED_LO_OFFSET);
    r->flags = mailbox_word(MAILBOX_FLAGS_OFFSET);
    r->chunk = mailbox_word(MAILBOX_CHUNK_OFFSET);
    if (r->chunk == 0) r->chunk = PREFILL_CHUNK;
    if (r->chunk > PREFILL_CHUNK) bad_setting(MAILBOX_CHUNK_OFFSET, r->chunk);

    if (r->n_prompt < 1) bad_setting(MAILBOX_N_PROMPT_OFFSET, r->n_prompt);
    // as reference.check_context: every prompt and new token needs a KV cache position
    // (the last new token is never fed back, but counting it keeps the rule simple)
    uint64_t needed = (uint64_t)r->n_prompt + r->n_new;
    if (needed > N_CTX) {
        board_exit(EXIT_CONTEXT_FULL, needed > UINT32_MAX ? UINT32_MAX : (uint32_t)needed, N_CTX, 0);
    }
    if (r->n_prompt > MAILBOX_MAX_PROMPT) bad_setting(MAILBOX_N_PROMPT_OFFSET, r->n_prompt);
    if (!(r->temperature >= 0.0f)) bad_setting(MAILBOX_TEMPERATURE_OFFSET, temperature.u);  // NaN too
    if (r->top_k < 1 || r->top_k > TOPK_MAX) bad_setting(MAILBOX_TOP_K_OFFSET, r->top_k);
    for (uint32_t t = 0; t < r->n_prompt; t++) {
        uint32_t id = mailbox_word(MAILBOX_PROMPT_OFFSET + 4 * t);
        if (id >= VOCAB_SIZE) bad_setting(MAILBOX_PROMPT_OFFSET + 4 * t, id);
    }
}

// ----------------------------------------------------------------------------
// generation: exactly compiler/reference.py generate()

void mcugpt_run(void) {
    check_image();
    read_request();
    verify_weights();
    load_psram_tier();
    load_resident();
    prng_init(&rng, request.seed);
    uint32_t n_prompt = request.n_prompt, n_total = request.n_prompt + request.n_new;

    // the prompt fills the KV cache a chunk of positions at a time; only its last
    // position's logits choose a token
    Chunk c;
    for (c.pos0 = 0; c.pos0 < n_prompt; c.pos0 += c.n) {
        c.n = n_prompt - c.pos0 < request.chunk ? n_prompt - c.pos0 : request.chunk;
        for (uint32_t p = 0; p < c.n; p++) c.tokens[p] = mailbox_word(MAILBOX_PROMPT_OFFSET + 4 * (c.pos0 + p));
        forward(&c, c.pos0 + c.n == n_prompt && request.n_new > 0);
    }
    // each new token is chosen, printed, and fed back (except the last: nobody needs
    // the logits after it)
    for (uint32_t pos = n_prompt; pos < n_total; pos++) {
        uint32_t token = choose();
        trace_token(token);
        print_token(token);
        c.pos0 = pos;
        c.n = 1;
        c.tokens[0] = token;
        if (pos + 1 < n_total) forward(&c, 1);
    }
    trace_stage(TRACE_IDLE);
    board_exit(EXIT_OK, request.n_new, 0, 0);
}
