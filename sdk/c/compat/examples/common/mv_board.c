/* mv_board.c - see mv_board.h. */
#include "mv_board.h"

#include <stdarg.h>
#include <stddef.h>

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static uint8_t log_buffer[4096] __attribute__((aligned(512)));
static volatile uint32_t ticks;

void SysTick_Handler(void)
{
    ticks++;
}

void board_init(void)
{
    uint32_t hz = 20000000u;
    (void)mvGetSysClk(&hz);
    SYST_CSR = 0;
    SYST_RVR = hz / 100u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
    (void)mvServerLoggingInit(log_buffer, sizeof log_buffer);
}

struct out {
    char buf[480];
    uint32_t n;
};

static void put(struct out *o, char c)
{
    if (o->n < sizeof o->buf) {
        o->buf[o->n++] = c;
    }
}

static void put_uint(struct out *o, uint32_t v, uint32_t base)
{
    char tmp[12];
    int i = 0;
    do {
        uint32_t d = v % base;
        tmp[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v != 0);
    while (i > 0) {
        put(o, tmp[--i]);
    }
}

void board_log(const char *fmt, ...)
{
    struct out o;
    o.n = 0;
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p != '\0'; p++) {
        if (*p != '%') {
            put(&o, *p);
            continue;
        }
        p++;
        if (*p == '.' && p[1] == '*' && p[2] == 's') {
            int len = va_arg(ap, int);
            const char *s = va_arg(ap, const char *);
            for (int i = 0; i < len && s != NULL; i++) {
                char c = s[i];
                put(&o, (c >= 0x20 && c < 0x7F) ? c : '.');
            }
            p += 2;
        } else if (*p == 's') {
            const char *s = va_arg(ap, const char *);
            while (s != NULL && *s != '\0') {
                put(&o, *s++);
            }
        } else if (*p == 'u') {
            put_uint(&o, va_arg(ap, unsigned), 10);
        } else if (*p == 'x') {
            put_uint(&o, va_arg(ap, unsigned), 16);
        } else if (*p == 'd') {
            int v = va_arg(ap, int);
            if (v < 0) {
                put(&o, '-');
                put_uint(&o, (uint32_t)(-(v + 1)) + 1u, 10);
            } else {
                put_uint(&o, (uint32_t)v, 10);
            }
        } else if (*p == 'c') {
            put(&o, (char)va_arg(ap, int));
        } else if (*p == '%') {
            put(&o, '%');
        } else if (*p == '\0') {
            break;
        }
    }
    va_end(ap);
    (void)mvServerLog((const uint8_t *)o.buf, (uint16_t)o.n);
}

uint32_t board_ms(void)
{
    uint64_t us = 0;
    (void)mvGetMicroseconds(&us);
    return (uint32_t)(us / 1000u);
}

void board_sleep(void)
{
    __asm volatile("wfi" ::: "memory");
}

uint32_t board_wait_flag(volatile uint32_t *flag, volatile uint32_t *stop, uint32_t timeout_ms)
{
    uint32_t start = board_ms();
    while (*flag == 0 && *stop == 0 && board_ms() - start < timeout_ms) {
        board_sleep();
    }
    return *flag;
}

int board_wait_connected(MvNetworkHandle net, uint32_t timeout_ms)
{
    uint32_t start = board_ms();
    for (;;) {
        enum MvNetworkStatus s;
        if (mvGetNetworkStatus(net, &s) == MV_STATUS_OKAY && s == MV_NETWORKSTATUS_CONNECTED) {
            return 1;
        }
        if (board_ms() - start >= timeout_ms) {
            return 0;
        }
        board_sleep();
    }
}

const char *board_connect(const struct MvNotificationSetup *setup, uint32_t net_tag, uint32_t timeout_ms,
                          MvNotificationHandle *nh, MvNetworkHandle *net, enum MvStatus *st)
{
    *st = mvSetupNotifications(setup, nh);
    if (*st != MV_STATUS_OKAY || *nh == 0) {
        return "mvSetupNotifications";
    }
    struct MvRequestNetworkParams np = {.version = 1, .v1 = {.notification_handle = *nh, .notification_tag = net_tag}};
    *st = mvRequestNetwork(&np, net);
    if (*st != MV_STATUS_OKAY || *net == 0) {
        return "mvRequestNetwork";
    }
    if (!board_wait_connected(*net, timeout_ms)) {
        *st = MV_STATUS_NETWORKNOTCONNECTED;
        return "network";
    }
    return NULL;
}

struct MvSizedString board_str(const char *s)
{
    uint32_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    struct MvSizedString r = {(const uint8_t *)s, n};
    return r;
}

void board_idle(void)
{
    for (;;) {
        board_sleep();
    }
}
