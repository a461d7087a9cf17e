// The HAL as a host program, so the firmware's runtime can run natively (tests, debugging):
// the flash image is a file, the CRC unit is software, the UART is stdout, the mailbox is
// filled from the command line. Only this file uses libc.
//
//   firmware_host IMAGE --prompt 15496,11,616 [--n-new N] [--temperature T] [--top-k K]
//                 [--seed S] [--dump-logits FILE] [--trace]
//
// stdout: the generated text's bytes. stderr: "token N" per generated token, "pos P" and
// "stage I" with --trace, and at the end "exit CODE arg0=A arg1=B arg2=C".
// The exit status is the EXIT_* code (memory_map.h); 64 is a usage error.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hal.h"
#include "memory_map.h"
#include "model_plan.h"

#define EXIT_USAGE 64

static FILE* image;
static uint64_t image_size;
static FILE* logits_file;     // --dump-logits: raw little-endian float32, tiles in order
static int trace_enabled;     // --trace
static uint32_t mailbox[MAILBOX_SIZE / 4];

// ----------------------------------------------------------------------------
// command line -> mailbox (the same words the board's host writes before reset)

static void usage(const char* msg) {
    fprintf(stderr, "firmware_host: %s\n"
            "usage: firmware_host IMAGE --prompt ID,ID,... [--n-new N] [--temperature T]"
            " [--top-k K] [--seed S] [--dump-logits FILE] [--trace]\n", msg);
    exit(EXIT_USAGE);
}

static uint64_t parse_u64(const char* s, const char* what) {
    char* end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-') usage(what);
    return (uint64_t)v;
}

static void mailbox_set(uint32_t byte_offset, uint32_t value) { mailbox[byte_offset / 4] = value; }

static void parse_prompt(char* list) {
    uint32_t n = 0;
    for (char* tok = strtok(list, ", "); tok; tok = strtok(NULL, ", ")) {
        if (n >= MAILBOX_MAX_PROMPT) usage("--prompt: too many tokens for the mailbox");
        uint64_t id = parse_u64(tok, "--prompt: token ids are unsigned integers");
        if (id > UINT32_MAX) usage("--prompt: token id out of range");
        mailbox_set(MAILBOX_PROMPT_OFFSET + 4 * n, (uint32_t)id);
        n++;
    }
    mailbox_set(MAILBOX_N_PROMPT_OFFSET, n);
}

void hal_init(int argc, char** argv) {
    // defaults: greedy, 16 new tokens, top-k 40, seed 0
    mailbox_set(MAILBOX_MAGIC_OFFSET, MAILBOX_MAGIC);
    mailbox_set(MAILBOX_N_NEW_OFFSET, 16);
    mailbox_set(MAILBOX_TOP_K_OFFSET, 40);
    const char* path = NULL;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--trace")) { trace_enabled = 1; continue; }
        if (a[0] != '-') {
            if (path) usage("more than one image path");
            path = a;
            continue;
        }
        if (!v) usage("option without a value");
        i++;
        if (!strcmp(a, "--prompt")) {
            parse_prompt(argv[i]);
        } else if (!strcmp(a, "--n-new")) {
            uint64_t n = parse_u64(v, "--n-new: an unsigned integer");
            mailbox_set(MAILBOX_N_NEW_OFFSET, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
        } else if (!strcmp(a, "--temperature")) {
            char* end;
            float t = strtof(v, &end);
            if (end == v || *end) usage("--temperature: a number");
            uint32_t bits;
            memcpy(&bits, &t, 4);
            mailbox_set(MAILBOX_TEMPERATURE_OFFSET, bits);
        } else if (!strcmp(a, "--top-k")) {
            uint64_t k = parse_u64(v, "--top-k: an unsigned integer");
            mailbox_set(MAILBOX_TOP_K_OFFSET, k > UINT32_MAX ? UINT32_MAX : (uint32_t)k);
        } else if (!strcmp(a, "--seed")) {
            uint64_t s = parse_u64(v, "--seed: an unsigned 64-bit integer");
            mailbox_set(MAILBOX_SEED_LO_OFFSET, (uint32_t)s);
            mailbox_set(MAILBOX_SEED_HI_OFFSET, (uint32_t)(s >> 32));
        } else if (!strcmp(a, "--dump-logits")) {
            logits_file = fopen(v, "wb");
            if (!logits_file) usage("--dump-logits: cannot create the file");
            mailbox_set(MAILBOX_FLAGS_OFFSET, MAILBOX_FLAG_DUMP_LOGITS);
        } else {
            usage("unknown option");
        }
    }
    if (!path) usage("no flash image given");
    image = fopen(path, "rb");
    if (!image) usage("cannot open the flash image");
    if (fseek(image, 0, SEEK_END) != 0) usage("cannot seek in the flash image");
    long size = ftell(image);
    if (size < 0) usage("cannot size the flash image");
    image_size = (uint64_t)size;
}

// ----------------------------------------------------------------------------
// flash + CRC32 in software (zlib's: reflected polynomial 0xEDB88320, init and final
// xor 0xFFFFFFFF), table-driven because the head reads the whole of wte every token

static uint32_t crc_table[256];
static uint32_t crc_state;    // the running CRC, pre- and post-inverted as zlib does

static void crc_update(const uint8_t* p, uint32_t n) {
    if (!crc_table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    }
    uint32_t c = ~crc_state;
    for (uint32_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    crc_state = ~c;
}

static void file_read(uint32_t flash_addr, void* dst, uint32_t len) {
    if ((uint64_t)flash_addr + len > image_size ||
        fseek(image, (long)flash_addr, SEEK_SET) != 0 ||
        fread(dst, 1, len, image) != len) {
        board_exit(EXIT_FLASH_ERROR, FLASH_STATUS_ERROR, flash_addr, len);
    }
}

// An asynchronous read is done when it is waited for, as late as the board's DMA may land
// it: a runtime that touched the buffer earlier would see stale bytes here too.
static struct {
    int active, crc;
    uint32_t flash_addr, len;
    void* dst;
} pending;

void flash_wait(void) {
    if (!pending.active) return;
    pending.active = 0;
    file_read(pending.flash_addr, pending.dst, pending.len);
    if (pending.crc) crc_update(pending.dst, pending.len);
}

void flash_read(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_wait();
    file_read(flash_addr, dst, len);
}

void crc_begin(void) {
    flash_wait();
    crc_state = 0;
}

static void read_start(uint32_t flash_addr, void* dst, uint32_t len, int crc) {
    flash_wait();
    if (len == 0) return;
    pending.active = 1;
    pending.crc = crc;
    pending.flash_addr = flash_addr;
    pending.dst = dst;
    pending.len = len;
}

void flash_read_crc_start(uint32_t flash_addr, void* dst, uint32_t len) { read_start(flash_addr, dst, len, 1); }
void flash_read_start(uint32_t flash_addr, void* dst, uint32_t len) { read_start(flash_addr, dst, len, 0); }

void flash_read_crc(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_read_crc_start(flash_addr, dst, len);
    flash_wait();
}

uint32_t crc_value(void) {
    flash_wait();
    return crc_state;
}

// ----------------------------------------------------------------------------
// PSRAM: a static byte array as large as the PSRAM the plan addresses (the KV cache when it
// is there, the tier's parts; none when it uses no PSRAM)

#define HOST_PSRAM_BYTES PSRAM_PLAN_BYTES
static uint8_t psram[HOST_PSRAM_BYTES > 0 ? HOST_PSRAM_BYTES : 1];

static void psram_bounds(uint32_t psram_addr, uint32_t len) {
    if ((uint64_t)psram_addr + len > HOST_PSRAM_BYTES) {
        board_exit(EXIT_PSRAM_ERROR, FLASH_STATUS_ERROR | FLASH_STATUS_DONE, psram_addr, len);
    }
}

void psram_read(uint32_t psram_addr, void* dst, uint32_t len) {
    if (len == 0) return;
    psram_bounds(psram_addr, len);
    memcpy(dst, psram + psram_addr, len);
}

void psram_write(uint32_t psram_addr, const void* src, uint32_t len) {
    if (len == 0) return;
    psram_bounds(psram_addr, len);
    memcpy(psram + psram_addr, src, len);
}

// The host copies at once: an asynchronous read is done when it starts.
void psram_read_start(uint32_t psram_addr, void* dst, uint32_t len) { psram_read(psram_addr, dst, len); }
void psram_wait(void) {}

// ----------------------------------------------------------------------------
// output, trace, mailbox, exit

void uart_write(const uint8_t* bytes, uint32_t n) { fwrite(bytes, 1, n, stdout); }

void trace_stage(uint32_t stage_index) {
    if (trace_enabled) fprintf(stderr, "stage %u\n", (unsigned)stage_index);
}

void trace_position(uint32_t pos) {
    if (trace_enabled) fprintf(stderr, "pos %u\n", (unsigned)pos);
}

// The image read whole into memory the first time it is asked for (the XIP runtime)
const uint8_t* flash_mapped(void) {
    static uint8_t* mapped;
    if (!mapped) {
        mapped = malloc(image_size ? (size_t)image_size : 1);
        if (!mapped) usage("no memory for the flash image");
        file_read(0, mapped, (uint32_t)image_size);
    }
    return mapped;
}

void trace_xip(uint32_t flash_addr, uint32_t len) {
    (void)flash_addr;
    (void)len;
}

void trace_crc_retry(uint32_t what) { fprintf(stderr, "crc retry %u\n", (unsigned)what); }

void trace_token(uint32_t token) {
    fflush(stdout);   // keep the text and the token lines in order when both go to a tty
    fprintf(stderr, "token %u\n", (unsigned)token);
}

void trace_logits(const float* p, uint32_t first, uint32_t count) {
    (void)first;      // tiles arrive in vocabulary order, so the file is just the floats
    if (logits_file && fwrite(p, sizeof(float), count, logits_file) != count) {
        fprintf(stderr, "firmware_host: cannot write the logits file\n");
        exit(EXIT_USAGE);
    }
}

uint32_t mailbox_word(uint32_t byte_offset) { return mailbox[byte_offset / 4]; }

void board_exit(uint32_t code, uint32_t a0, uint32_t a1, uint32_t a2) {
    fflush(stdout);
    if (logits_file) fclose(logits_file);
    fprintf(stderr, "exit %u arg0=%u arg1=%u arg2=%u\n", (unsigned)code, (unsigned)a0,
            (unsigned)a1, (unsigned)a2);
    exit((int)code);
}
