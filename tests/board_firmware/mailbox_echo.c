/* Prints the mailbox as the firmware sees it: the settings words, then the prompt ids,
 * each as 8 hex digits followed by a space.
 */
#include "board_test.h"

int main(void) {
    static const uint32_t settings[] = {
        MAILBOX_MAGIC_OFFSET, MAILBOX_N_PROMPT_OFFSET, MAILBOX_N_NEW_OFFSET,
        MAILBOX_TEMPERATURE_OFFSET, MAILBOX_TOP_K_OFFSET, MAILBOX_SEED_LO_OFFSET,
        MAILBOX_SEED_HI_OFFSET, MAILBOX_FLAGS_OFFSET,
    };
    for (uint32_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        put_hex(REG32(MAILBOX_BASE + settings[i]));
        put_char(' ');
    }
    for (uint32_t i = 0; i < MAILBOX(N_PROMPT); i++) {
        put_hex(PROMPT(i));
        put_char(' ');
    }
    return EXIT_OK;
}
