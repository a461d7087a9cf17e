/* Misbehaving programs: each mailbox PROMPT[0] selects one way to go wrong.
 * PROMPT[1] is the stage index written to TRACE.STAGE first, PROMPT[2..5] the parameters.
 */
#include <stdint.h>
#include "memory_map.h"

#define MB(off) REG32(MAILBOX_BASE + (off))
#define PROMPT(i) MB(MAILBOX_PROMPT_OFFSET + 4u * (i))

__attribute__((noinline)) void poke_beyond_ram(uint32_t addr) { REG32(addr) = 0x12345678u; }
__attribute__((noinline)) uint32_t peek_beyond_ram(uint32_t addr) { return REG32(addr); }
__attribute__((noinline)) void spin_forever(void) { for (;;) { __asm__ volatile(""); } }
__attribute__((noinline)) void hit_breakpoint(void) { __asm__ volatile("bkpt #0x42"); }
__attribute__((noinline)) void run_undefined_instruction(void) { __asm__ volatile("udf #7"); }
__attribute__((noinline)) void jump_to(uint32_t addr) { ((void (*)(void))(addr | 1u))(); }
__attribute__((noinline)) void write_undefined_register(void) { REG32(FLASHCTL_BASE + 0x100u) = 1u; }
__attribute__((noinline)) void write_half_register(uint32_t base) { *(volatile uint16_t*)(base + 4u) = 1u; }

int main(void) {
    TRACE_STAGE = PROMPT(1);
    switch (PROMPT(0)) {
    case 0: poke_beyond_ram(PROMPT(2)); break;
    case 1: return (int)peek_beyond_ram(PROMPT(2));
    case 2: spin_forever(); break;
    case 3: hit_breakpoint(); break;
    case 4: run_undefined_instruction(); break;
    case 5: jump_to(PROMPT(2)); break;
    case 6: write_undefined_register(); break;
    case 8: write_half_register(PROMPT(2)); break;   /* a 2-byte write to the controller's ADDR */
    case 7:  /* exit with an error code and its arguments */
        SYSCTL_ARG0 = PROMPT(3);
        SYSCTL_ARG1 = PROMPT(4);
        SYSCTL_ARG2 = PROMPT(5);
        return (int)PROMPT(2);
    }
    return 0;
}
