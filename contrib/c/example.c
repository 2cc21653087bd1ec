/*
 * The banner scenario of the Linux kernel's kmemdump design, from C: register a banner, feed the
 * watchdog, then freeze.
 *
 *     cc -O2 -o example example.c && ./example 0.5
 *
 * With `kmemdump watch` running, the process is dumped half a second after it stops feeding.
 * It prints one line, "ready <pid> <banner address>", once its table is published.
 */
#define KMD_TABLE_IMPLEMENTATION
#include "kmemdump_table.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static char linux_banner[] = "C producer banner: kmemdump_table.h example, format v1";
static unsigned long long requests_served;

int main(int argc, char **argv) {
    double timeout = argc > 1 ? atof(argv[1]) : 1.0;
    struct kmd_table table;
    if (kmd_table_open(&table, NULL, 16) != 0) {
        perror("kmemdump table");
        return 1;
    }
    if (kmd_register(&table, KMD_ID_BANNER, "banner", linux_banner, sizeof linux_banner, KMD_KIND_BUFFER) != 0 ||
        kmd_register(&table, KMD_ID_USER_START, "requests", &requests_served, sizeof requests_served,
                     KMD_KIND_ADDRESS) != 0) {
        perror("kmemdump register");
        return 1;
    }
    kmd_watchdog(&table, (unsigned long long)(timeout * 1e9));
    for (requests_served = 0; requests_served < 1000; requests_served++) kmd_feed(&table);
    printf("ready %d %p\n", (int)getpid(), (void *)linux_banner);
    fflush(stdout);
    for (;;) pause(); /* frozen: no more feeding */
}
