/* Drives the PSRAM controller with a list of transfers from the mailbox.
 *
 * The arena (64 KiB) is first filled with bytes i * 7 + 3 (mod 256) for byte i.
 * PROMPT: n, then n times (stage, command, PSRAM address, arena offset, length).
 * For each: TRACE.STAGE = stage, ADDR/RAM/LEN, CMD, poll STATUS until DONE, then one
 * UART line "status=X sum=D\n": the STATUS bits and the byte sum of the arena range
 * [offset, offset + length) computed by the CPU (after a READ: what the DMA brought).
 * STATUS is then cleared by writing the bits back (write-1-to-clear) and read again,
 * which must give 0 ("clear=0" is appended when it does not: "clear=X").
 * The RAM address is arena + offset, unless the offset is >= 0x20000000: then it is that
 * absolute address (to point the DMA outside SRAM). Errors do not stop the program.
 */
#include "board_test.h"

#define ARENA_BYTES (64u * 1024u)
uint8_t arena[ARENA_BYTES] __attribute__((section(".arena"), aligned(8)));

int main(void) {
    for (uint32_t i = 0; i < ARENA_BYTES; i++) arena[i] = (uint8_t)(i * 7u + 3u);
    uint32_t n = PROMPT(0);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t stage = PROMPT(1 + 5 * k), cmd = PROMPT(2 + 5 * k), addr = PROMPT(3 + 5 * k);
        uint32_t off = PROMPT(4 + 5 * k), len = PROMPT(5 + 5 * k);
        uint32_t ram = off >= 0x20000000u ? off : (uint32_t)(uintptr_t)(arena + off);
        TRACE_STAGE = stage;
        barrier();
        PSRAMCTL_ADDR = addr;
        PSRAMCTL_RAM = ram;
        PSRAMCTL_LEN = len;
        PSRAMCTL_CMD = cmd;
        uint32_t status;
        while (!((status = PSRAMCTL_STATUS) & FLASH_STATUS_DONE)) {}
        barrier();
        uint32_t sum = 0;
        if (off < 0x20000000u) {
            for (uint32_t j = 0; j < len && off + j < ARENA_BYTES; j++) sum += arena[off + j];
        }
        put_str("status=");
        put_dec(status);
        put_str(" sum=");
        put_dec(sum);
        PSRAMCTL_STATUS = status;
        uint32_t after = PSRAMCTL_STATUS;
        if (after) {
            put_str(" clear=");
            put_dec(after);
        }
        put_char('\n');
    }
    TRACE_STAGE = TRACE_IDLE;
    return EXIT_OK;
}
