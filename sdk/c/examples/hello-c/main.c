/*
 * hello-c - the smallest useful Keel app in C.
 *
 * Logs its ABI/visor versions and its update state once, then once per second its device
 * id, uptime and wall clock. It never confirms an update (keel_update_confirm()): a real app
 * would, once it knows it works. No libc: the few string helpers it needs are below.
 */
#include <stddef.h>
#include <stdint.h>

#include "keel.h"

/* Appends the NUL-terminated string `s` at `p`, never writing at or past `end`. */
static char *append_str(char *p, char *end, const char *s)
{
    while (*s != '\0' && p < end) {
        *p++ = *s++;
    }
    return p;
}

/* Appends `v` in decimal at `p`, never writing at or past `end`. */
static char *append_u64(char *p, char *end, uint64_t v)
{
    char digits[20]; /* 2^64 - 1 has 20 digits */
    unsigned n = 0;
    do {
        digits[n++] = (char)('0' + (unsigned)(v % 10u));
        v /= 10u;
    } while (v != 0);
    while (n > 0 && p < end) {
        *p++ = digits[--n];
    }
    return p;
}

/* Logs the `len` bytes at `line` at INFO level. */
static void log_line(const char *line, const char *p)
{
    (void)keel_log(KEEL_LOG_INFO, (const uint8_t *)line, (uint32_t)(p - line));
}

/* Logs "hello-c: <what> failed: <STATUS>". */
static void log_failure(const char *what, keel_status_t status)
{
    char line[96];
    char *end = line + sizeof line;
    char *p = append_str(line, end, "hello-c: ");
    p = append_str(p, end, what);
    p = append_str(p, end, " failed: ");
    p = append_str(p, end, keel_status_name(status));
    (void)keel_log(KEEL_LOG_ERROR, (const uint8_t *)line, (uint32_t)(p - line));
}

int main(void)
{
    char id[KEEL_DEVICE_ID_LEN + 1];
    char line[160];
    char *end = line + sizeof line;
    char *p;
    keel_status_t st;

    st = keel_device_id((uint8_t *)id, KEEL_DEVICE_ID_LEN);
    if (st == KEEL_STATUS_OK) {
        id[KEEL_DEVICE_ID_LEN] = '\0';
    } else {
        log_failure("keel_device_id", st);
        *append_str(id, id + KEEL_DEVICE_ID_LEN, "unknown") = '\0';
    }

    keel_abi_info_t info = { .version = 1 };
    st = keel_abi_info(&info);
    if (st == KEEL_STATUS_OK) {
        p = append_str(line, end, "hello-c: started abi=");
        p = append_u64(p, end, info.abi_major);
        p = append_str(p, end, ".");
        p = append_u64(p, end, info.abi_minor);
        p = append_str(p, end, " visor=");
        p = append_u64(p, end, info.visor_major);
        p = append_str(p, end, ".");
        p = append_u64(p, end, info.visor_minor);
        p = append_str(p, end, ".");
        p = append_u64(p, end, info.visor_patch);
        log_line(line, p);
    } else {
        log_failure("keel_abi_info", st);
    }

    keel_update_info_t up = { .version = 1 };
    st = keel_update_info(&up);
    if (st == KEEL_STATUS_OK) {
        p = append_str(line, end, "hello-c: update on_trial=");
        p = append_u64(p, end, up.on_trial);
        p = append_str(p, end, " installed_seq=");
        p = append_u64(p, end, up.installed_sequence);
        p = append_str(p, end, " last_seq=");
        p = append_u64(p, end, up.last_sequence);
        p = append_str(p, end, " outcome=");
        p = append_u64(p, end, up.last_outcome);
        p = append_str(p, end, " reason=");
        p = append_u64(p, end, up.last_reason);
        log_line(line, p);
    } else {
        log_failure("keel_update_info", st);
    }

    /* Events (an update ready, the sleep timer) arrive as records in this ring. */
    static keel_notify_ring_t ring;
    st = keel_notify_setup(&ring, sizeof ring, KEEL_NOTIFY_DEFAULT_IRQ);
    if (st != KEEL_STATUS_OK) {
        log_failure("keel_notify_setup", st);
    }
    keel_notify_enable_irq(KEEL_NOTIFY_DEFAULT_IRQ);

    for (;;) {
        uint64_t w = 0;
        uint64_t t = keel_monotonic_us();
        st = keel_wall_time_us(&w);

        p = append_str(line, end, "hello-c: device=");
        p = append_str(p, end, id);
        p = append_str(p, end, " uptime_ms=");
        p = append_u64(p, end, t / 1000u);
        p = append_str(p, end, " wall=");
        if (st == KEEL_STATUS_TIME_NOT_SET) {
            p = append_str(p, end, "not-set");
        } else if (st == KEEL_STATUS_OK) {
            p = append_u64(p, end, w);
        } else {
            p = append_str(p, end, keel_status_name(st));
        }
        log_line(line, p);

        (void)keel_sleep_us(&ring, 1000000u);
    }
}
