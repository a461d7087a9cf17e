/* Known RAM use: PROMPT[0] bytes of stack in one call, arena[0 .. PROMPT[1] - 1] written.
 *
 * Static data: 400 bytes of .data (table) and 1024 bytes of .bss (scratch).
 */
#include "board_test.h"

#define ARENA_BYTES (64u * 1024u)
uint8_t arena[ARENA_BYTES] __attribute__((section(".arena"), aligned(8)));
volatile uint32_t table[100] = {1, 2, 3};
volatile uint32_t scratch[256];

__attribute__((noinline)) static uint32_t use_stack(uint32_t n) {
    volatile uint8_t buf[n];  /* a VLA: exactly n bytes below the caller's frame */
    for (uint32_t i = 0; i < n; i++) buf[i] = (uint8_t)i;
    return buf[n / 2];
}

int main(void) {
    uint32_t stack_bytes = PROMPT(0), arena_bytes = PROMPT(1);
    uint32_t x = stack_bytes ? use_stack(stack_bytes) : 0;
    for (uint32_t i = 0; i < arena_bytes; i++) arena[i] = 0;
    scratch[0] = table[0] + x;
    return EXIT_OK;
}
