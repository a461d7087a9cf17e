// The firmware's entry point after startup.c (board) or the C library (host).
#include "hal.h"
#include "runtime.h"

int main(int argc, char** argv) {
    hal_init(argc, argv);   // the host reads its image path and request from argv
    mcugpt_run();           // ends the run itself: board_exit() never returns
}
