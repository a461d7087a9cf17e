/* The flash controller's other commands: JEDEC id, status, write enable, erase, program.
 *
 * Erases the sector at PROMPT[0], programs 256 bytes (i * 3 + 1) at its start from RAM,
 * reads them back by DMA and prints "id=XXXXXXXX st=S wel=W ok|bad\n".
 */
#include "board_test.h"

static uint8_t page[256], back[256];

__attribute__((noinline)) static uint32_t command(uint32_t cmd) {
    barrier();
    FLASHCTL_CMD = cmd;
    uint32_t status;
    while (!((status = FLASHCTL_STATUS) & FLASH_STATUS_DONE)) {}
    barrier();
    return status;
}

int main(void) {
    uint32_t sector = PROMPT(0), errors = 0;
    errors |= command(FLASH_CMD_READ_ID);
    uint32_t id = FLASHCTL_JEDEC_ID;
    errors |= command(FLASH_CMD_READ_STATUS);
    uint32_t st = FLASHCTL_DEV_STATUS;
    errors |= command(FLASH_CMD_WRITE_ENABLE);
    errors |= command(FLASH_CMD_READ_STATUS);
    uint32_t wel = FLASHCTL_DEV_STATUS;

    FLASHCTL_ADDR = sector;
    errors |= command(FLASH_CMD_SECTOR_ERASE);
    for (uint32_t i = 0; i < 256; i++) page[i] = (uint8_t)(i * 3u + 1u);
    errors |= command(FLASH_CMD_WRITE_ENABLE);
    FLASHCTL_DST = (uint32_t)(uintptr_t)page;
    FLASHCTL_LEN = 256;
    errors |= command(FLASH_CMD_PAGE_PROGRAM);
    FLASHCTL_DST = (uint32_t)(uintptr_t)back;
    errors |= command(FLASH_CMD_READ);

    uint32_t same = 1;
    for (uint32_t i = 0; i < 256; i++) same &= back[i] == page[i];
    put_str("id=");
    put_hex(id);
    put_str(" st=");
    put_dec(st);
    put_str(" wel=");
    put_dec(wel);
    put_str(same && !(errors & FLASH_STATUS_ERROR) ? " ok\n" : " bad\n");
    return EXIT_OK;
}
