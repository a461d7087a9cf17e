// Cortex-M7 startup: the vector table and what happens between reset and main().
// Freestanding C11; the symbols come from the linker script (compiler/templates/firmware.ld.j2).
#include <stdint.h>
#include "memory_map.h"

int main(int argc, char** argv);

// Linker script symbols: addresses only, there is nothing "at" them to read as a variable.
extern uint32_t _sidata[];       // .data's initial values, in code flash
extern uint32_t _sdata[], _edata[];
extern uint32_t _sbss[], _ebss[];
extern uint32_t _stack_bottom[]; // the plan's stack reserve: [_stack_bottom, _estack)
extern uint32_t _estack[];       // top of RAM: the initial stack pointer

// What an untouched stack word holds: the board scans up from _stack_bottom for the first
// word that is not this to measure the peak stack use.
#define STACK_PAINT 0x5AFEC0DEu

// Coprocessor Access Control Register: an ARMv7-M architectural register (System Control
// Block), the same on every Cortex-M7, not a board address.
#define SCB_CPACR (*(volatile uint32_t*)0xE000ED88u)

void Reset_Handler(void);
void Fault_Handler(void);

// ----------------------------------------------------------------------------
// vector table: word 0 is the initial SP, word 1 the reset handler; then the system
// exceptions. No peripheral interrupts: every peripheral here is polled.

typedef union {
    void (*handler)(void);
    uint32_t* stack_top;
} Vector;

__attribute__((section(".isr_vector"), used)) const Vector vector_table[16] = {
    {.stack_top = _estack},
    {.handler = Reset_Handler},
    {.handler = Fault_Handler},   // 2 NMI
    {.handler = Fault_Handler},   // 3 HardFault
    {.handler = Fault_Handler},   // 4 MemManage
    {.handler = Fault_Handler},   // 5 BusFault
    {.handler = Fault_Handler},   // 6 UsageFault
    {0}, {0}, {0}, {0},           // 7-10 reserved
    {.handler = Fault_Handler},   // 11 SVCall
    {.handler = Fault_Handler},   // 12 DebugMonitor
    {0},                          // 13 reserved
    {.handler = Fault_Handler},   // 14 PendSV
    {.handler = Fault_Handler},   // 15 SysTick
};

// Any exception is a bug here (nothing enables one): report its number (IPSR) in ARG0
// and stop.
void Fault_Handler(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    SYSCTL_ARG0 = ipsr & 0x1FFu;
#ifdef EXIT_FAULT
    SYSCTL_EXIT = EXIT_FAULT;
#endif
    for (;;) {
    }
}

// ----------------------------------------------------------------------------
// reset: RAM as C expects it, the FPU on, the stack painted, then main()

// The D-cache: its contents are unknown at reset, so invalidate every line (by set and way,
// as CMSIS's SCB_EnableDCache does, from the geometry in CCSIDR), then turn it on. From here
// on the HAL keeps it coherent with the DMA (hal_board.c).
static void dcache_enable(void) {
    if ((SCB_CLIDR & 7u) < 2u) return;   // no level-1 data cache (sim64, an abstract device)
    SCB_CSSELR = 0;                   // the level-1 data cache
    __asm__ volatile("dsb" ::: "memory");
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1, ways = ((ccsidr >> 3) & 0x3FFu) + 1;
    uint32_t way_shift = ways > 1 ? (uint32_t)__builtin_clz(ways - 1) : 0;
    for (uint32_t set = 0; set < sets; set++)
        for (uint32_t way = 0; way < ways; way++) SCB_DCISW = set << 5 | (ways > 1 ? way << way_shift : 0);
    __asm__ volatile("dsb" ::: "memory");
    SCB_CCR |= SCB_CCR_DC;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}

void Reset_Handler(void) {
    // .data: initial values are stored in code flash; copy them to RAM. Volatile so the
    // compiler cannot turn the loops into calls to memcpy/memset, which this build lacks.
    volatile uint32_t* dst = _sdata;
    for (const volatile uint32_t* src = _sidata; dst < _edata;) *dst++ = *src++;
    // .bss: zero. The arena is a separate NOLOAD section and stays as the board left it.
    for (volatile uint32_t* p = _sbss; p < _ebss;) *p++ = 0;

    // Full access to coprocessors 10 and 11 (the FPU), then make sure it took effect
    // before any floating-point instruction.
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");

    dcache_enable();

    // Paint the unused stack, from the bottom of the reserve up to where SP is now.
    uint32_t* sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t* p = _stack_bottom; p < sp;) *p++ = STACK_PAINT;

    main(0, 0);
    for (;;) {   // main never returns (the runtime ends with board_exit)
    }
}
