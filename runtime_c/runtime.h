// The firmware's runtime: check the flash image and the request, then generate text one
// atomic stage at a time (runtime.c).
#ifndef MCUGPT_RUNTIME_H
#define MCUGPT_RUNTIME_H

// Runs the whole request and ends with board_exit(EXIT_OK, ...) or an EXIT_* error:
// it never returns.
__attribute__((noreturn)) void mcugpt_run(void);

#endif // MCUGPT_RUNTIME_H
