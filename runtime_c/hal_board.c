// The HAL on the board: polled memory-mapped peripherals, addresses from memory_map.h.
// Freestanding C99: no libc, no interrupts (the emulated M7 has no usable NVIC).
#include <stdint.h>
#include "hal.h"
#include "memory_map.h"
#include "model_plan.h"   // DMA_TIMEOUT_*: the bound of a DMA wait, from the board's parts

// The flash controller's DMA writes RAM behind the compiler's back, and the board reads
// the logits tile from RAM when told to. "dsb" waits for the core's own writes to land;
// the "memory" clobber stops the compiler from moving loads and stores across it.
static inline void barrier(void) { __asm__ volatile("dsb" ::: "memory"); }

// The D-cache (turned on at reset, startup.c) sees the CPU's accesses, not the DMA's: after a
// DMA wrote cacheable RAM, the lines the cache holds there are stale and must be invalidated
// before the CPU reads them; before a DMA reads RAM the CPU wrote, its dirty lines must be
// cleaned to memory. The data TCM (below SRAM_BASE) is not cached and needs neither. The
// arena's buffers start on line boundaries (the plan aligns them to DCACHE_LINE), so
// invalidating a transfer's last partial line discards nothing of another buffer.
static int dcache_on;                 // startup.c turned it on (a board with a D-cache)

static void dcache_by_address(volatile uint32_t* op, const void* p, uint32_t len) {
    uintptr_t a = (uintptr_t)p;
    if (!dcache_on || len == 0 || a < SRAM_BASE || a >= MAILBOX_BASE) return;
    barrier();
    for (uintptr_t line = a & ~(uintptr_t)(DCACHE_LINE - 1); line < a + len; line += DCACHE_LINE)
        *op = (uint32_t)line;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}
static void dcache_invalidate(const void* p, uint32_t len) { dcache_by_address(&SCB_DCIMVAC, p, len); }
static void dcache_clean(const void* p, uint32_t len) { dcache_by_address(&SCB_DCCMVAC, p, len); }

// A destination that shares a cache line with other data (a table entry read into a local,
// not an arena buffer) must not be invalidated: that would discard the CPU's dirty bytes of
// the same line. Such reads land in this line-aligned bounce buffer, and the CPU copies them.
#define BOUNCE_BYTES 128u
static uint8_t bounce[BOUNCE_BYTES] __attribute__((aligned(DCACHE_LINE)));

static int shares_a_line(const void* p, uint32_t len) {
    uintptr_t a = (uintptr_t)p;
    return dcache_on && a >= SRAM_BASE && a < MAILBOX_BASE && ((a | len) & (DCACHE_LINE - 1)) != 0;
}

void hal_init(int argc, char** argv) {
    (void)argc;
    (void)argv;
    dcache_on = (SCB_CCR & SCB_CCR_DC) != 0;
    DEMCR |= DEMCR_TRCENA;            // the cycle counter that bounds every DMA wait
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

// ----------------------------------------------------------------------------
// DMA transfers: the flash and PSRAM controllers are DMA engines; after CMD a transfer runs
// on its own while the CPU goes on (STATUS reads BUSY meanwhile). Each controller has one
// transfer in flight at a time: its Transfer says whether one is, for its wait and for the
// error report.

typedef struct {
    uint32_t active, addr, len;   // addr: the flash or PSRAM address
    void* dst;                    // the RAM it writes, or 0 (a write to PSRAM)
} Transfer;

// The cycles a transfer of len bytes may take (model_plan.h: several times its expected time
// on the board's slowest part), at most 2^31 so the counter's wrap cannot hide it.
static uint32_t dma_bound(uint32_t len) {
    uint64_t cycles = DMA_TIMEOUT_BASE_CYCLES + ((uint64_t)len * DMA_TIMEOUT_CYCLES_PER_KIB >> 10);
    return cycles < 0x80000000u ? (uint32_t)cycles : 0x80000000u;
}

// Poll the controller's STATUS until the transfer in flight is DONE (ERROR ends the run with
// exit_code, the address and the length), then make its bytes visible to the CPU. A transfer
// still BUSY after its bound never will be (a hung DMA, a part that stopped answering): the
// run ends with EXIT_DMA_TIMEOUT (bus, address, length) instead of polling forever.
static void transfer_wait(Transfer* t, volatile uint32_t* status_reg, uint32_t exit_code) {
    if (!t->active) return;
    t->active = 0;
    const uint32_t finished = FLASH_STATUS_DONE | FLASH_STATUS_ERROR;
    uint32_t status = *status_reg;
    if (!(status & finished)) status = *status_reg;
    if (!(status & finished)) {   // a long wait (the usual one ends at the second poll): bound it
        uint32_t start = DWT_CYCCNT, bound = dma_bound(t->len);
        do {
            status = *status_reg;
            if (!(status & finished) && DWT_CYCCNT - start > bound) {
                board_exit(EXIT_DMA_TIMEOUT, exit_code == EXIT_FLASH_ERROR ? DMA_BUS_FLASH : DMA_BUS_PSRAM, t->addr, t->len);
            }
        } while (!(status & finished));
    }
    if (status & FLASH_STATUS_ERROR) board_exit(exit_code, status, t->addr, t->len);
    barrier();                        // the DMA's bytes are in RAM: nothing may read them earlier
    if (t->dst) dcache_invalidate(t->dst, t->len);
}

// ----------------------------------------------------------------------------
// flash controller: ADDR, DST, LEN, then CMD = READ; poll STATUS until DONE

static Transfer pending;

void flash_wait(void) { transfer_wait(&pending, &FLASHCTL_STATUS, EXIT_FLASH_ERROR); }

static void dma_start(uint32_t flash_addr, void* dst, uint32_t len) {
    if (len == 0) return;
    barrier();                        // the CPU's last use of dst is done before the DMA overwrites it
    FLASHCTL_ADDR = flash_addr;
    FLASHCTL_DST = (uint32_t)(uintptr_t)dst;
    FLASHCTL_LEN = len;
    FLASHCTL_CMD = FLASH_CMD_READ;
    pending = (Transfer){1, flash_addr, len, dst};
}

// CRC_CTRL as last written (RESET is a pulse: it reads back as ENABLE), so a stream of
// tiles writes it once, not once per tile. ~0u: not written yet.
static uint32_t crc_ctrl = ~0u;

static void set_crc_ctrl(uint32_t value) {
    if (value != crc_ctrl) {
        FLASHCTL_CRC_CTRL = value;
        crc_ctrl = value;
    }
}

// One synchronous read, through the bounce buffer when dst shares a cache line.
static void read_now(uint32_t flash_addr, void* dst, uint32_t len) {
    if (!shares_a_line(dst, len)) {
        dma_start(flash_addr, dst, len);
        flash_wait();
        return;
    }
    for (uint32_t done = 0; done < len;) {
        uint32_t n = len - done < BOUNCE_BYTES ? len - done : BOUNCE_BYTES;
        dma_start(flash_addr + done, bounce, n);
        flash_wait();
        for (uint32_t i = 0; i < n; i++) ((uint8_t*)dst)[done + i] = bounce[i];
        done += n;
    }
}

void flash_read(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_wait();
    set_crc_ctrl(0);                  // keep these bytes out of any running CRC
    read_now(flash_addr, dst, len);
}

void crc_begin(void) {
    flash_wait();
    FLASHCTL_CRC_CTRL = CRC_RESET | CRC_ENABLE;
    crc_ctrl = CRC_ENABLE;
}

void flash_read_crc_start(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_wait();
    set_crc_ctrl(CRC_ENABLE);         // no RESET: continue the blob's CRC
    dma_start(flash_addr, dst, len);
}

void flash_read_start(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_wait();
    set_crc_ctrl(0);
    dma_start(flash_addr, dst, len);
}

void flash_read_crc(uint32_t flash_addr, void* dst, uint32_t len) {
    flash_wait();
    set_crc_ctrl(CRC_ENABLE);
    read_now(flash_addr, dst, len);
}

uint32_t crc_value(void) {
    flash_wait();
    return FLASHCTL_CRC_VALUE;
}

// ----------------------------------------------------------------------------
// PSRAM controller: ADDR, RAM, LEN, then CMD = READ or WRITE; poll STATUS until DONE

static Transfer psram_pending;

void psram_wait(void) { transfer_wait(&psram_pending, &PSRAMCTL_STATUS, EXIT_PSRAM_ERROR); }

static void psram_dma_start(uint32_t cmd, uint32_t psram_addr, uint32_t ram, uint32_t len) {
    psram_wait();
    if (len == 0) return;
    barrier();                        // a write's source must be in RAM before the DMA reads it
    PSRAMCTL_ADDR = psram_addr;
    PSRAMCTL_RAM = ram;
    PSRAMCTL_LEN = len;
    PSRAMCTL_CMD = cmd;
    psram_pending = (Transfer){1, psram_addr, len, cmd == PSRAM_CMD_READ ? (void*)(uintptr_t)ram : 0};
}

void psram_read_start(uint32_t psram_addr, void* dst, uint32_t len) {
    psram_dma_start(PSRAM_CMD_READ, psram_addr, (uint32_t)(uintptr_t)dst, len);
}

void psram_read(uint32_t psram_addr, void* dst, uint32_t len) {
    psram_read_start(psram_addr, dst, len);
    psram_wait();
}

void psram_write(uint32_t psram_addr, const void* src, uint32_t len) {
    psram_wait();
    dcache_clean(src, len);
    psram_dma_start(PSRAM_CMD_WRITE, psram_addr, (uint32_t)(uintptr_t)src, len);
    psram_wait();
}

// ----------------------------------------------------------------------------
// UART and trace unit

void uart_write(const uint8_t* bytes, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) UART_DATA = bytes[i];
}

void trace_stage(uint32_t stage_index) { TRACE_STAGE = stage_index; }
void trace_position(uint32_t pos) { TRACE_POSITION = pos; }
void trace_token(uint32_t token) { TRACE_TOKEN = token; }
void trace_crc_retry(uint32_t what) { TRACE_CRC_RETRY = what; }
const uint8_t* flash_mapped(void) { return (const uint8_t*)XIP_BASE; }

void trace_xip(uint32_t flash_addr, uint32_t len) {
    TRACE_XIP_ADDR = flash_addr;
    TRACE_XIP_LEN = len;              // last: this write charges the reads
}

void trace_logits(const float* p, uint32_t first, uint32_t count) {
    barrier();                        // the tile must be in RAM before the board reads it
    TRACE_LOGITS_ADDR = (uint32_t)(uintptr_t)p;
    TRACE_LOGITS_FIRST = first;
    TRACE_LOGITS_COUNT = count;       // last: this write makes the board read the tile
}

// ----------------------------------------------------------------------------
// mailbox and run control

uint32_t mailbox_word(uint32_t byte_offset) { return REG32(MAILBOX_BASE + byte_offset); }

void board_exit(uint32_t code, uint32_t a0, uint32_t a1, uint32_t a2) {
    SYSCTL_ARG0 = a0;
    SYSCTL_ARG1 = a1;
    SYSCTL_ARG2 = a2;
    SYSCTL_EXIT = code;               // the board stops here
    for (;;) {
    }
}
