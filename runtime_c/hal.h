// The hardware abstraction layer: everything the runtime asks of the board, and nothing more.
//
// Two implementations, one interface:
//   hal_board.c  the Cortex-M7 board: memory-mapped registers from include/memory_map.h
//   hal_host.c   a host program: the flash image is a file, the mailbox comes from argv
// so the same runtime.c runs on the emulated board and as a native test program.
#ifndef MCUGPT_HAL_H
#define MCUGPT_HAL_H

#include <stdint.h>

// Called once by main() before anything else. The board ignores the arguments (it has
// none); the host reads the image path and the request (prompt, settings) from them.
void hal_init(int argc, char** argv);

// ----------------------------------------------------------------------------
// external flash: DMA reads, optionally fed through the CRC unit

// Copy len bytes at flash byte address flash_addr to dst. The CRC unit does not see them.
// A controller error ends the run: board_exit(EXIT_FLASH_ERROR, status, flash_addr, len).
void flash_read(uint32_t flash_addr, void* dst, uint32_t len);

// The CRC unit is single-channel: one running CRC32 (zlib's) at a time. To check a blob,
//   crc_begin(); flash_read_crc(...) for each of its pieces, in order; crc_value()
// with no plain flash_read of anything else in between.
void crc_begin(void);
void flash_read_crc(uint32_t flash_addr, void* dst, uint32_t len);
uint32_t crc_value(void);

// Asynchronous reads: the DMA runs while the CPU computes (double buffering).
// flash_read_crc_start starts a flash_read_crc and returns at once; flash_wait returns when
// it has finished (a controller error ends the run as above). Until then the bytes at dst
// are undefined: do not touch them. At most one transfer is in flight: every other flash
// call (flash_read, flash_read_crc, crc_begin, crc_value, flash_read_crc_start) first waits
// for it, so transfers finish in the order they were started and the CRC unit sees a
// blob's pieces in order. flash_wait with nothing in flight returns at once.
// flash_read_start: the same without the CRC unit.
void flash_read_start(uint32_t flash_addr, void* dst, uint32_t len);
// dst must be an arena buffer (it starts on a cache line and owns the rest of its last line):
// the D-cache's copy of those lines is invalidated when the transfer is waited for.
void flash_read_crc_start(uint32_t flash_addr, void* dst, uint32_t len);
void flash_wait(void);

// ----------------------------------------------------------------------------
// external PSRAM (the KV cache when SRAM cannot hold it): DMA between PSRAM and SRAM

// Copy len bytes at PSRAM byte address psram_addr to dst (SRAM), or len bytes at src to
// psram_addr. Each call is one DMA transfer; len 0 issues none. A controller error (an
// address past the end, a board without PSRAM) ends the run:
// board_exit(EXIT_PSRAM_ERROR, status, psram_addr, len).
void psram_read(uint32_t psram_addr, void* dst, uint32_t len);
void psram_write(uint32_t psram_addr, const void* src, uint32_t len);
// Asynchronous reads (weights of the PSRAM tier, double-buffered like the flash's):
// psram_read_start returns at once, psram_wait returns when it has landed. Every other PSRAM
// call waits for it first. dst: an arena buffer, as for flash_read_crc_start.
void psram_read_start(uint32_t psram_addr, void* dst, uint32_t len);
void psram_wait(void);

// ----------------------------------------------------------------------------
// output and trace

// Bytes of generated text (the UART on the board, stdout on the host).
void uart_write(const uint8_t* bytes, uint32_t n);

// Events the board uses to attribute time and I/O, and to collect the results:
void trace_stage(uint32_t stage_index);   // a stage starts; TRACE_IDLE between tokens
void trace_position(uint32_t pos);        // a forward pass for position pos starts
void trace_token(uint32_t token);         // a token was chosen
// XIP runtime: the whole flash, readable in place (the board's memory-mapped XSPI window).
const uint8_t* flash_mapped(void);
// XIP runtime: the CPU is about to read len bytes at flash address flash_addr in place
// (XIP_BASE + flash_addr), so the board charges the D-cache's line fills of the mapped flash.
void trace_xip(uint32_t flash_addr, uint32_t len);
// A CRC-checked read failed its check once and is about to be read again: `what` is the
// tensor index, or CRC_RETRY_SECTION for the header, tables or token table. The board counts
// retries (a run that needed one says so).
void trace_crc_retry(uint32_t what);
// Debug channel: count logits of vocabulary ids first .. first+count-1 are at p.
void trace_logits(const float* p, uint32_t first, uint32_t count);

// ----------------------------------------------------------------------------
// the request, and the end of the run

// One u32 word of the mailbox the host filled before reset, at a MAILBOX_*_OFFSET byte
// offset (memory_map.h). runtime.c decodes the settings and the prompt from these words.
uint32_t mailbox_word(uint32_t byte_offset);

// Stop with an EXIT_* code (memory_map.h) and three numbers that explain it.
__attribute__((noreturn)) void board_exit(uint32_t code, uint32_t a0, uint32_t a1, uint32_t a2);

#endif // MCUGPT_HAL_H
