/* Writes each PROMPT word's low byte to the UART, one DATA write per byte, then exits. */
#include "board_test.h"

int main(void) {
    for (uint32_t i = 0; i < MAILBOX(N_PROMPT); i++) UART_DATA = PROMPT(i) & 0xFFu;
    return EXIT_OK;
}
