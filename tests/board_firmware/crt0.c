/* Startup code of the board's test programs: vector table, reset, exit.
 *
 * Reset_Handler zeroes .bss, calls main() and writes its return value to SYSCTL.EXIT.
 * A fault handler reports the exception through SYSCTL (ARG0 = exception number) with
 * an exit code no firmware uses, so the board can tell a fault handler's exit apart.
 */
#include <stdint.h>
#include "memory_map.h"

extern uint32_t _sbss, _ebss, _estack;
int main(void);

#define FAULT_EXIT_CODE 0xFA17u

__attribute__((noreturn)) void board_exit(uint32_t code) {
    SYSCTL_EXIT = code;
    for (;;) {}
}

__attribute__((noreturn)) void Reset_Handler(void) {
    REG32(0xE000ED88u) |= 0xFu << 20;  /* CPACR: enable the FPU (CP10, CP11) */
    for (uint32_t* p = &_sbss; p < &_ebss; p++) *p = 0;
    board_exit((uint32_t)main());
}

__attribute__((noreturn)) void Fault_Handler(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    SYSCTL_ARG0 = ipsr;
    board_exit(FAULT_EXIT_CODE);
}

__attribute__((section(".isr_vector"), used)) const void* const vector_table[16] = {
    &_estack, Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,  /* NMI .. UsageFault */
    0, 0, 0, 0,
    Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,              /* SVC .. SysTick */
};
