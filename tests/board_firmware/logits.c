/* A fake model: N_NEW steps over a vocabulary of PROMPT[0] ids.
 *
 * Step k writes POSITION = k, computes logits[i] = -0.5 * (i - t)^2 with t = (37 k + 5) mod
 * vocab (exact in float32 for small vocabularies), dumps them through the logits channel
 * in tiles of PROMPT[1] (if MAILBOX_FLAG_DUMP_LOGITS), and writes TOKEN = argmax = t.
 */
#include "board_test.h"

#define MAX_VOCAB 4096u
float logits[MAX_VOCAB];

int main(void) {
    uint32_t vocab = PROMPT(0), tile = PROMPT(1);
    if (vocab > MAX_VOCAB || tile == 0) {
        SYSCTL_ARG0 = MAILBOX_PROMPT_OFFSET;
        SYSCTL_ARG1 = vocab;
        return EXIT_BAD_MAILBOX;
    }
    int dump = (MAILBOX(FLAGS) & MAILBOX_FLAG_DUMP_LOGITS) != 0;
    for (uint32_t k = 0; k < MAILBOX(N_NEW); k++) {
        TRACE_POSITION = k;
        uint32_t target = (37u * k + 5u) % vocab;
        for (uint32_t i = 0; i < vocab; i++) {
            float d = (float)i - (float)target;
            logits[i] = -0.5f * d * d;
        }
        uint32_t best = 0;
        for (uint32_t i = 1; i < vocab; i++)
            if (logits[i] > logits[best]) best = i;
        if (dump) {
            barrier();
            for (uint32_t first = 0; first < vocab; first += tile) {
                TRACE_LOGITS_ADDR = (uint32_t)(uintptr_t)&logits[first];
                TRACE_LOGITS_FIRST = first;
                TRACE_LOGITS_COUNT = vocab - first < tile ? vocab - first : tile;
            }
        }
        TRACE_TOKEN = best;
    }
    return EXIT_OK;
}
