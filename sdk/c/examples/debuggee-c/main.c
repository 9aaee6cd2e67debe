/*
 * debuggee-c - the C example of remote debugging (`keel debug`).
 *
 * Every 100 ms it computes a value from a counter and the global `scale` and logs it, so a
 * debugger session can break in scaled(), print its argument and `scale`, change `scale`, and
 * see the next log lines change. Built with -Og so every line and variable is where the debug
 * information says.
 */
#include <stddef.h>
#include <stdint.h>

#include "keel.h"

/* The scale scaled() applies; a debugger changes it (`set var scale = 7`). */
volatile uint32_t scale = 1;

/* Adds 1000 to `v` (a call to step into and finish out of). */
__attribute__((noinline)) uint32_t offset(uint32_t v)
{
    uint32_t r = v + 1000u;
    return r;
}

/* `x` scaled: the function a debugger breaks in. */
__attribute__((noinline)) uint32_t scaled(uint32_t x)
{
    uint32_t product = x * scale;
    return offset(product);
}

/* Appends `v` in decimal at `p`, never writing at or past `end`. */
static char *append_u32(char *p, char *end, uint32_t v)
{
    char digits[10];
    unsigned n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0);
    while (n > 0 && p < end) {
        *p++ = digits[--n];
    }
    return p;
}

static char *append_str(char *p, char *end, const char *s)
{
    while (*s != '\0' && p < end) {
        *p++ = *s++;
    }
    return p;
}

int main(void)
{
    static keel_notify_ring_t ring;
    char line[64];
    char *end = line + sizeof line;
    uint32_t tick = 0;

    (void)keel_log_str(KEEL_LOG_INFO, "debuggee-c: started");
    (void)keel_notify_setup(&ring, sizeof ring, KEEL_NOTIFY_DEFAULT_IRQ);
    keel_notify_enable_irq(KEEL_NOTIFY_DEFAULT_IRQ);
    for (;;) {
        tick++;
        uint32_t value = scaled(tick);
        char *p = append_str(line, end, "debuggee-c: tick=");
        p = append_u32(p, end, tick);
        p = append_str(p, end, " value=");
        p = append_u32(p, end, value);
        (void)keel_log(KEEL_LOG_INFO, (const uint8_t *)line, (uint32_t)(p - line));
        (void)keel_sleep_us(&ring, 100000u);
    }
}
