/*
 * mv_compat.c - the Microvisor-compatible API (mv_syscalls.h) on top of Keel (keel.h) and its
 * channel messages (keel_chan.h). Written from the API's public documentation; see README.md
 * for the design and what differs.
 *
 * Notifications. Keel has one notification ring per app and routes one interrupt line to it;
 * Microvisor apps set up their own notification buffers, each with an interrupt of their
 * choice. So this layer owns the Keel ring (MV_COMPAT_RING_RECORDS records) on line
 * MV_COMPAT_IRQ (default 80, handler MV_COMPAT_IRQ_HANDLER = IRQ80_Handler) and, in that
 * handler, turns every Keel record into Microvisor records: each is written into the app's
 * buffer at its next index (wrapping), then the handler of the buffer's interrupt in the app's
 * vector table is called once for it, so the app sees one interrupt per record, in order. Only
 * the Keel line is routed to the app, so pending the app's own line would do nothing.
 *
 * Concurrency. Tables are changed with PRIMASK set (short sections), so the calls may be made
 * from any task of an RTOS; the handler reads them under the same mask and calls the app's
 * handlers with it cleared. Requests are encoded into one static scratch buffer
 * (MV_COMPAT_SCRATCH_LEN), under the mask, and copied into the channel by keel_chan_send().
 */
#ifndef MV_COMPAT_RING_RECORDS
#define MV_COMPAT_RING_RECORDS 64u
#endif
#define KEEL_NOTIFY_RING_RECORDS MV_COMPAT_RING_RECORDS

#include "mv_syscalls.h"

#include "keel.h"
#include "keel_chan.h"

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

#ifndef MV_COMPAT_IRQ
/** The Keel notification line this layer owns, and its handler's name in keel_crt0.c. */
#define MV_COMPAT_IRQ 80u
#define MV_COMPAT_IRQ_HANDLER IRQ80_Handler
#endif
#ifndef MV_COMPAT_MAX_CENTERS
#define MV_COMPAT_MAX_CENTERS 4u
#endif
#ifndef MV_COMPAT_MAX_NETWORK
#define MV_COMPAT_MAX_NETWORK 8u
#endif
#ifndef MV_COMPAT_MAX_SYSTEM
#define MV_COMPAT_MAX_SYSTEM 4u
#endif
#define MV_COMPAT_MAX_CHANNELS KEEL_CHAN_MAX_CHANNELS
#ifndef MV_COMPAT_SCRATCH_LEN
/** Largest request (encoded HTTP request, MQTT publish, ...) the layer can send. */
#define MV_COMPAT_SCRATCH_LEN 4096u
#endif
#ifndef MV_COMPAT_SYSCLK_HZ
#define MV_COMPAT_SYSCLK_HZ 20000000u
#endif
#ifndef MV_COMPAT_NUM_IRQS
/** Interrupt lines in the app's vector table (keel_crt0.c: 96). */
#define MV_COMPAT_NUM_IRQS 96u
#endif
#ifndef MV_COMPAT_MQTT_DEFAULT_PROFILE
/** The broker profile an MQTT channel with an empty endpoint uses. */
#define MV_COMPAT_MQTT_DEFAULT_PROFILE "default"
#endif
/** The tag of this layer's Keel network requests. */
#define COMPAT_NET_TAG 0x4D564E54u

void MV_COMPAT_IRQ_HANDLER(void);

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */
/* ---------------------------------------------------------------------------------------- */

enum { H_CENTER = 1, H_NET = 2, H_CHAN = 3, H_SYS = 4 };

struct center {
    uint32_t handle;
    uint32_t irq;
    volatile struct MvNotification *buf;
    uint32_t n;
    uint32_t next;
};

struct net {
    uint32_t handle;
    uint32_t center;
    uint32_t tag;
    int32_t last; /* last MvNetworkStatus reported, -1: none */
};

struct chan {
    uint32_t handle;
    uint32_t keel;
    uint32_t center;
    uint32_t tag;
    uint32_t type; /* enum MvChannelType */
    const uint8_t *rx;
    uint32_t read_off; /* mvReadChannel: bytes of the head message already consumed */
    uint8_t sent;      /* HTTP/config: the request went out */
    uint8_t session;   /* MQTT: last KEEL_MSG_MQTT_SESSION_* seen */
};

struct sys {
    uint32_t handle;
    uint32_t center;
    uint32_t tag;
    uint32_t source;
    int32_t last;  /* NETWORK: last status reported */
    uint8_t owed;  /* UPDATE: an update ready before it was opened, still to report */
};

static struct center centers[MV_COMPAT_MAX_CENTERS];
static struct net nets[MV_COMPAT_MAX_NETWORK];
static struct chan chans[MV_COMPAT_MAX_CHANNELS];
static struct sys syss[MV_COMPAT_MAX_SYSTEM];
static keel_notify_ring_t ring;
static uint8_t ring_ready;
static volatile uint8_t update_ready;
static uint8_t net_used;
static uint8_t logging_ready;
static uint32_t generation;
static uint8_t scratch[MV_COMPAT_SCRATCH_LEN] __attribute__((aligned(4)));

static inline uint32_t lock(void)
{
    uint32_t m;
    __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(m)::"memory");
    return m;
}

static inline void unlock(uint32_t m)
{
    __asm volatile("msr primask, %0" ::"r"(m) : "memory");
}

static inline int in_handler(void)
{
    uint32_t ipsr;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    return (ipsr & 0x1FFu) != 0;
}

/* Handles: kind in bits 28..31, a generation in 8..27, the slot + 1 in 0..7: never 0, and a
 * stale or foreign handle never names another object. Call with the lock held. */
static uint32_t new_handle(uint32_t kind, uint32_t slot)
{
    generation = (generation + 1u) & 0xFFFFFu;
    if (generation == 0) {
        generation = 1;
    }
    return kind << 28 | generation << 8 | (slot + 1u);
}

static int32_t slot_of(uint32_t h, uint32_t kind, uint32_t max)
{
    if (h == 0 || h >> 28 != kind || (h & 0xFFu) == 0 || (h & 0xFFu) > max) {
        return -1;
    }
    return (int32_t)(h & 0xFFu) - 1;
}

static struct center *find_center(uint32_t h)
{
    int32_t i = slot_of(h, H_CENTER, MV_COMPAT_MAX_CENTERS);
    return (i >= 0 && centers[i].handle == h) ? &centers[i] : NULL;
}

static struct net *find_net(uint32_t h)
{
    int32_t i = slot_of(h, H_NET, MV_COMPAT_MAX_NETWORK);
    return (i >= 0 && nets[i].handle == h) ? &nets[i] : NULL;
}

static struct chan *find_chan(uint32_t h)
{
    int32_t i = slot_of(h, H_CHAN, MV_COMPAT_MAX_CHANNELS);
    return (i >= 0 && chans[i].handle == h) ? &chans[i] : NULL;
}

static struct sys *find_sys(uint32_t h)
{
    int32_t i = slot_of(h, H_SYS, MV_COMPAT_MAX_SYSTEM);
    return (i >= 0 && syss[i].handle == h) ? &syss[i] : NULL;
}

static void copy(uint8_t *dst, const uint8_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        dst[i] = src[i];
    }
}

/* How mvClose*() and mvRelease*() end: the caller's handle is zeroed, valid (`found`) or not. */
static enum MvStatus closed(uint32_t *handle, int found)
{
    *handle = 0;
    return found ? MV_STATUS_OKAY : MV_STATUS_INVALIDHANDLE;
}

/* ---------------------------------------------------------------------------------------- */
/* Status mapping                                                                           */
/* ---------------------------------------------------------------------------------------- */

static enum MvStatus mv_status(keel_status_t s)
{
    switch (s) {
    case KEEL_STATUS_OK: return MV_STATUS_OKAY;
    case KEEL_STATUS_TIME_NOT_SET: return MV_STATUS_TIMENOTSET;
    case KEEL_STATUS_PARAMETER_FAULT: return MV_STATUS_PARAMETERFAULT;
    case KEEL_STATUS_INVALID_BUFFER_SIZE: return MV_STATUS_INVALIDBUFFERSIZE;
    case KEEL_STATUS_INVALID_ARGUMENT: return MV_STATUS_PARAMETERFAULT;
    case KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION: return MV_STATUS_UNSUPPORTEDSTRUCTUREVERSION;
    case KEEL_STATUS_NOT_IMPLEMENTED: return MV_STATUS_UNAVAILABLE;
    case KEEL_STATUS_UNAVAILABLE: return MV_STATUS_UNAVAILABLE;
    case KEEL_STATUS_LOG_MESSAGE_TOO_LONG: return MV_STATUS_LOGMESSAGETOOLONG;
    case KEEL_STATUS_INVALID_HANDLE: return MV_STATUS_INVALIDHANDLE;
    case KEEL_STATUS_TOO_MANY_CHANNELS: return MV_STATUS_TOOMANYCHANNELS;
    case KEEL_STATUS_CHANNEL_CLOSED: return MV_STATUS_CHANNELCLOSED;
    case KEEL_STATUS_WOULD_BLOCK: return MV_STATUS_INVALIDBUFFERSIZE;
    case KEEL_STATUS_NETWORK_NOT_CONNECTED: return MV_STATUS_NETWORKNOTCONNECTED;
    case KEEL_STATUS_RATE_LIMITED: return MV_STATUS_RATELIMITED;
    case KEEL_STATUS_INVALID_BUFFER_ALIGNMENT: return MV_STATUS_INVALIDBUFFERALIGNMENT;
    case KEEL_STATUS_UNKNOWN_CHANNEL_KIND: return MV_STATUS_UNKNOWNCHANNELTYPE;
    case KEEL_STATUS_BUFFER_IN_USE: return MV_STATUS_BUFFERALREADYINUSE;
    case KEEL_STATUS_NO_DATA: return MV_STATUS_RESPONSENOTPRESENT;
    default: return MV_STATUS_INTERNALERROR;
    }
}

const char *mvStatusName(enum MvStatus s)
{
    static const char *const names[] = {
        "OKAY", "TIMENOTSET", "PARAMETERFAULT", "INVALIDBUFFERSIZE", "PERIPHERALACCESSFAULT",
        "BUFFERALREADYINUSE", "INVALIDINTERRUPT", "INVALIDHANDLE", "TOOMANYNOTIFICATIONBUFFERS",
        "INVALIDVECTOR", "UNAVAILABLE", "UNSUPPORTEDSTRUCTUREVERSION", "TOOMANYCHANNELS",
        "UNKNOWNCHANNELENDPOINT", "UNKNOWNCHANNELTYPE", "CHANNELCLOSED", "NETWORKNOTCONNECTED",
        "RATELIMITED", "INVALIDBUFFERALIGNMENT", "LATEFAULT", "RESPONSENOTPRESENT", "INDEXINVALID",
        "OFFSETINVALID", "REQUESTALREADYSENT", "REQUESTUNSUCCESSFUL", "LOGMESSAGETOOLONG",
        "LOGGINGDISABLEDBYSERVER", "TOOMANYCONFIGKEYS", "UNKNOWNCONFIGSTORE", "UNKNOWNCONFIGSCOPE",
        "INVALIDCONFIGKEY", "INVALIDAUTHENTICATION", "WRONGDATAREQUESTED", "INTERNALERROR",
        "TOOMANYELEMENTS", "REQUIREDELEMENTMISSING", "MICROVISORBUSY", "ADDRESSOUTOFRANGE",
        "INPUTTOOLONG"};
    return (uint32_t)s < sizeof names / sizeof names[0] ? names[s] : "UNKNOWN";
}

/* Keel's link state as Microvisor's. */
static enum MvNetworkStatus mv_net(uint32_t state, uint32_t offline)
{
    if (state == KEEL_NET_STATE_CONNECTED) {
        return MV_NETWORKSTATUS_CONNECTED;
    }
    if (state == KEEL_NET_STATE_CONNECTING || offline == KEEL_NET_OFFLINE_NO_ADDRESS) {
        return MV_NETWORKSTATUS_CONNECTING;
    }
    if (offline == KEEL_NET_OFFLINE_NOT_PROVISIONED) {
        return MV_NETWORKSTATUS_DELIBERATELYOFFLINE;
    }
    return MV_NETWORKSTATUS_DISCONNECTEDWITHLINKUP;
}

static enum MvClosureReason mv_closure(uint32_t reason)
{
    switch (reason) {
    case KEEL_CHAN_REASON_NONE: return MV_CLOSUREREASON_NONE;
    case KEEL_CHAN_REASON_BY_SERVER: return MV_CLOSUREREASON_CHANNELCLOSEDBYSERVER;
    case KEEL_CHAN_REASON_REFUSED: return MV_CLOSUREREASON_CHANNELRESETBYSERVER;
    case KEEL_CHAN_REASON_LINK_LOST: return MV_CLOSUREREASON_NETWORKDISCONNECTED;
    case KEEL_CHAN_REASON_PROTOCOL_ERROR: return MV_CLOSUREREASON_CONNECTIONTERMINATED;
    case KEEL_CHAN_REASON_BY_APP: return MV_CLOSUREREASON_CLOSEDBYAPPLICATION;
    case KEEL_CHAN_REASON_RATE_LIMITED: return MV_CLOSUREREASON_CHANNELRESETBYSERVER;
    default: return MV_CLOSUREREASON_UNEXPECTEDLYTERMINATED;
    }
}

static enum MvHttpResult mv_http_result(uint32_t r)
{
    /* Keel's codes 0..6 are Microvisor's; the others are failures of the request. */
    return r <= KEEL_MSG_HTTP_RESPONSE_TOO_LARGE ? (enum MvHttpResult)r : MV_HTTPRESULT_REQUESTFAILED;
}

/* ---------------------------------------------------------------------------------------- */
/* Notifications                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef void (*isr_t)(void);

static isr_t app_isr(uint32_t irq)
{
    const volatile uint32_t *vtor = (const volatile uint32_t *)(uintptr_t)(*(volatile uint32_t *)0xE000ED08u);
    return (isr_t)(uintptr_t)vtor[16u + irq];
}

static enum MvStatus setup_ring(void)
{
    if (ring_ready) {
        return MV_STATUS_OKAY;
    }
    keel_status_t st = keel_notify_setup(&ring, sizeof ring, MV_COMPAT_IRQ);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st);
    }
    keel_notify_enable_irq(MV_COMPAT_IRQ);
    ring_ready = 1;
    return MV_STATUS_OKAY;
}

/* Writes one record into the buffer of center `ch` and runs its interrupt handler once. */
static void deliver(uint32_t ch, enum MvEventType type, uint32_t tag)
{
    isr_t fn = NULL;
    uint64_t now = keel_monotonic_us();
    uint32_t m = lock();
    struct center *c = find_center(ch);
    if (c != NULL) {
        volatile struct MvNotification *r = &c->buf[c->next];
        r->microseconds = now;
        r->tag = tag;
        r->event_type = type;
        c->next = (c->next + 1u) % c->n;
        fn = app_isr(c->irq);
    }
    unlock(m);
    if (fn != NULL && fn != MV_COMPAT_IRQ_HANDLER) {
        fn();
    }
}

static void net_changed(uint32_t state, uint32_t offline, int force)
{
    int32_t s = (int32_t)mv_net(state, offline);
    for (uint32_t i = 0; i < MV_COMPAT_MAX_NETWORK; i++) {
        uint32_t m = lock();
        uint32_t ch = 0, tag = 0;
        if (nets[i].handle != 0 && nets[i].center != 0 && (force || nets[i].last != s)) {
            nets[i].last = s;
            ch = nets[i].center;
            tag = nets[i].tag;
        }
        unlock(m);
        if (ch != 0) {
            deliver(ch, MV_EVENTTYPE_NETWORKSTATUSCHANGED, tag);
        }
    }
    for (uint32_t i = 0; i < MV_COMPAT_MAX_SYSTEM; i++) {
        uint32_t m = lock();
        uint32_t ch = 0, tag = 0;
        if (syss[i].handle != 0 && syss[i].source == MV_SYSTEMNOTIFICATIONSOURCE_NETWORK &&
            (force || syss[i].last != s)) {
            syss[i].last = s;
            ch = syss[i].center;
            tag = syss[i].tag;
        }
        unlock(m);
        if (ch != 0) {
            deliver(ch, MV_EVENTTYPE_NETWORKSTATUSCHANGED, tag);
        }
    }
}

/* A channel event for the channel whose Keel handle is `keel`. */
static void chan_event(uint32_t keel, enum MvEventType type)
{
    uint32_t m = lock();
    uint32_t ch = 0, tag = 0;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_CHANNELS; i++) {
        if (chans[i].handle != 0 && chans[i].keel == keel) {
            /* No write-space events on HTTP and config channels. */
            if (type != MV_EVENTTYPE_CHANNELDATAWRITESPACE || chans[i].type == MV_CHANNELTYPE_MQTT) {
                ch = chans[i].center;
                tag = chans[i].tag;
            }
        }
    }
    unlock(m);
    if (ch != 0) {
        deliver(ch, type, tag);
    }
}

/* Reports UPDATEDOWNLOADED to the UPDATE system notifications: to all of them, or (`owed_only`)
 * to those opened when an update was already ready. */
static void report_update(int owed_only)
{
    for (uint32_t i = 0; i < MV_COMPAT_MAX_SYSTEM; i++) {
        uint32_t m = lock();
        uint32_t ch = 0, tag = 0;
        if (syss[i].handle != 0 &&
            (owed_only ? syss[i].owed : syss[i].source == MV_SYSTEMNOTIFICATIONSOURCE_UPDATE)) {
            ch = syss[i].center;
            tag = syss[i].tag;
            syss[i].owed = 0;
        }
        unlock(m);
        if (ch != 0) {
            deliver(ch, MV_EVENTTYPE_UPDATEDOWNLOADED, tag);
        }
    }
}

/* Records were lost in the Keel ring: report what may have happened, from the current state. */
static void resync(void)
{
    for (uint32_t i = 0; i < MV_COMPAT_MAX_CHANNELS; i++) {
        uint32_t m = lock();
        uint32_t keel = chans[i].handle != 0 ? chans[i].keel : 0;
        unlock(m);
        keel_chan_info_t info = {.version = 1};
        if (keel != 0 && keel_chan_info(keel, &info) == KEEL_STATUS_OK) {
            if (info.rx_pending != 0) {
                chan_event(keel, MV_EVENTTYPE_CHANNELDATAREADABLE);
            }
            if (info.state == KEEL_CHAN_STATE_CLOSED) {
                chan_event(keel, MV_EVENTTYPE_CHANNELNOTCONNECTED);
            }
        }
    }
    keel_net_status_t ns = {.version = 1};
    if (keel_net_status(&ns) == KEEL_STATUS_OK) {
        net_changed(ns.state, ns.offline, 1);
    }
}

void MV_COMPAT_IRQ_HANDLER(void)
{
    /* Updates ready before the app opened its UPDATE system notification. */
    report_update(1);
    keel_notify_record_t r;
    while (ring_ready && keel_notify_pop(&ring, &r)) {
        switch (r.kind) {
        case KEEL_NOTIFY_UPDATE_READY:
            update_ready = 1;
            report_update(0);
            break;
        case KEEL_NOTIFY_NET_STATUS:
            net_changed(KEEL_NOTIFY_NET_STATE(r.value), KEEL_NOTIFY_NET_OFFLINE(r.value), 0);
            break;
        case KEEL_NOTIFY_CHANNEL_READABLE:
            chan_event(KEEL_NOTIFY_CHAN_HANDLE(r.value), MV_EVENTTYPE_CHANNELDATAREADABLE);
            break;
        case KEEL_NOTIFY_CHANNEL_WRITABLE:
            chan_event(KEEL_NOTIFY_CHAN_HANDLE(r.value), MV_EVENTTYPE_CHANNELDATAWRITESPACE);
            break;
        case KEEL_NOTIFY_CHANNEL_CLOSED:
            chan_event(KEEL_NOTIFY_CHAN_HANDLE(r.value), MV_EVENTTYPE_CHANNELNOTCONNECTED);
            break;
        case KEEL_NOTIFY_OVERRUN:
            resync();
            break;
        default:
            break;
        }
    }
}

enum MvStatus mvSetupNotifications(const struct MvNotificationSetup *setup, MvNotificationHandle *handle_out)
{
    if (setup == NULL || handle_out == NULL || setup->buffer == NULL || ((uintptr_t)setup->buffer & 3u) != 0) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (setup->buffer_size % 16u != 0 || setup->buffer_size < 32u) {
        return MV_STATUS_INVALIDBUFFERSIZE;
    }
    if (setup->irq >= MV_COMPAT_NUM_IRQS || setup->irq == MV_COMPAT_IRQ) {
        return MV_STATUS_INVALIDINTERRUPT;
    }
    enum MvStatus st = setup_ring();
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    uintptr_t a0 = (uintptr_t)setup->buffer, a1 = a0 + setup->buffer_size;
    uint32_t m = lock();
    int32_t free_slot = -1;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_CENTERS; i++) {
        if (centers[i].handle == 0) {
            free_slot = free_slot < 0 ? (int32_t)i : free_slot;
            continue;
        }
        uintptr_t b0 = (uintptr_t)centers[i].buf, b1 = b0 + 16u * centers[i].n;
        if (centers[i].irq == setup->irq) {
            st = MV_STATUS_INVALIDINTERRUPT;
        } else if (a0 < b1 && b0 < a1) {
            st = MV_STATUS_BUFFERALREADYINUSE;
        }
    }
    if (st == MV_STATUS_OKAY && free_slot < 0) {
        st = MV_STATUS_TOOMANYNOTIFICATIONBUFFERS;
    }
    if (st == MV_STATUS_OKAY) {
        struct center *c = &centers[free_slot];
        c->irq = setup->irq;
        c->buf = setup->buffer;
        c->n = setup->buffer_size / 16u;
        c->next = 0;
        c->handle = new_handle(H_CENTER, (uint32_t)free_slot);
        *handle_out = c->handle;
    }
    unlock(m);
    return st;
}

enum MvStatus mvCloseNotifications(MvNotificationHandle *handle)
{
    if (handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    uint32_t m = lock();
    struct center *c = find_center(*handle);
    if (c != NULL) {
        c->handle = 0;
    }
    unlock(m);
    return closed(handle, c != NULL);
}

enum MvStatus mvOpenSystemNotification(const struct MvOpenSystemNotificationParams *params,
                                       MvSystemEventHandle *handle)
{
    if (in_handler()) {
        return MV_STATUS_UNAVAILABLE;
    }
    if (params == NULL || handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (params->notification_source != MV_SYSTEMNOTIFICATIONSOURCE_NETWORK &&
        params->notification_source != MV_SYSTEMNOTIFICATIONSOURCE_UPDATE) {
        return MV_STATUS_INVALIDHANDLE;
    }
    enum MvStatus st = setup_ring();
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    uint32_t m = lock();
    int32_t slot = -1;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_SYSTEM && slot < 0; i++) {
        if (syss[i].handle == 0) {
            slot = (int32_t)i;
        }
    }
    if (find_center(params->notification_handle) == NULL) {
        st = MV_STATUS_INVALIDHANDLE;
    } else if (slot < 0) {
        st = MV_STATUS_UNAVAILABLE;
    } else if (params->notification_source == MV_SYSTEMNOTIFICATIONSOURCE_NETWORK) {
        /* Keel reports link changes while the app holds a request: hold one for this. */
        keel_status_t k = keel_net_request(COMPAT_NET_TAG);
        st = mv_status(k);
    }
    if (st == MV_STATUS_OKAY) {
        struct sys *s = &syss[slot];
        s->center = params->notification_handle;
        s->tag = params->notification_tag;
        s->source = params->notification_source;
        s->last = -1;
        s->owed = params->notification_source == MV_SYSTEMNOTIFICATIONSOURCE_UPDATE && update_ready;
        s->handle = new_handle(H_SYS, (uint32_t)slot);
        *handle = s->handle;
        if (s->owed) {
            /* Reported from the handler, like every other record. */
            *(volatile uint32_t *)(uintptr_t)(0xE000E200u + 4u * (MV_COMPAT_IRQ / 32u)) = 1u << (MV_COMPAT_IRQ % 32u);
        }
    }
    unlock(m);
    return st;
}

enum MvStatus mvCloseSystemNotification(MvSystemEventHandle *handle)
{
    if (in_handler()) {
        return MV_STATUS_UNAVAILABLE;
    }
    if (handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    uint32_t m = lock();
    struct sys *s = find_sys(*handle);
    if (s != NULL) {
        if (s->source == MV_SYSTEMNOTIFICATIONSOURCE_NETWORK) {
            (void)keel_net_release();
        }
        s->handle = 0;
    }
    unlock(m);
    return closed(handle, s != NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* Time, identity, misc                                                                     */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvNoOp(void)
{
    return MV_STATUS_OKAY;
}

enum MvStatus mvGetMicroseconds(uint64_t *usec)
{
    if (usec == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    *usec = keel_monotonic_us();
    return MV_STATUS_OKAY;
}

enum MvStatus mvGetWallTime(uint64_t *usec)
{
    if (usec == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    return mv_status(keel_wall_time_us(usec));
}

enum MvStatus mvGetDeviceId(uint8_t *buf, uint32_t len)
{
    if (buf == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (len < KEEL_DEVICE_ID_LEN) {
        return MV_STATUS_INVALIDBUFFERSIZE;
    }
    return mv_status(keel_device_id(buf, len));
}

static enum MvStatus clock_hz(uint32_t *hz)
{
    if (hz == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    *hz = MV_COMPAT_SYSCLK_HZ;
    return MV_STATUS_OKAY;
}

enum MvStatus mvGetSysClk(uint32_t *hz) { return clock_hz(hz); }
enum MvStatus mvGetHClk(uint32_t *hz) { return clock_hz(hz); }
enum MvStatus mvGetPClk1(uint32_t *hz) { return clock_hz(hz); }
enum MvStatus mvGetPClk2(uint32_t *hz) { return clock_hz(hz); }

enum MvStatus mvPeriphPeek32(uint32_t reg, uint32_t *output)
{
    (void)reg;
    (void)output;
    return MV_STATUS_PERIPHERALACCESSFAULT;
}

enum MvStatus mvPeriphPoke32(uint32_t reg, uint32_t mask, uint32_t xorvalue)
{
    (void)reg;
    (void)mask;
    (void)xorvalue;
    return MV_STATUS_PERIPHERALACCESSFAULT;
}

/* ---------------------------------------------------------------------------------------- */
/* Network                                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvRequestNetwork(const struct MvRequestNetworkParams *params, MvNetworkHandle *handle)
{
    if (params == NULL || handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (params->version != 1) {
        return MV_STATUS_UNSUPPORTEDSTRUCTUREVERSION;
    }
    enum MvStatus st = setup_ring();
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    uint32_t m = lock();
    int32_t slot = -1;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_NETWORK && slot < 0; i++) {
        if (nets[i].handle == 0) {
            slot = (int32_t)i;
        }
    }
    if (params->v1.notification_handle != 0 && find_center(params->v1.notification_handle) == NULL) {
        st = MV_STATUS_INVALIDHANDLE;
    } else if (slot < 0) {
        st = MV_STATUS_PARAMETERFAULT; /* as documented: the handles are at their maximum */
    } else {
        /* With the mask held, the first status record is handled after the entry exists. */
        st = mv_status(keel_net_request(COMPAT_NET_TAG));
    }
    if (st == MV_STATUS_OKAY) {
        struct net *n = &nets[slot];
        n->center = params->v1.notification_handle;
        n->tag = params->v1.notification_tag;
        n->last = -1;
        n->handle = new_handle(H_NET, (uint32_t)slot);
        *handle = n->handle;
        net_used = 1;
    }
    unlock(m);
    return st;
}

enum MvStatus mvReleaseNetwork(MvNetworkHandle *handle)
{
    if (handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    uint32_t m = lock();
    struct net *n = find_net(*handle);
    if (n != NULL) {
        (void)keel_net_release();
        n->handle = 0;
    }
    unlock(m);
    return closed(handle, n != NULL);
}

enum MvStatus mvGetNetworkStatus(MvNetworkHandle handle, enum MvNetworkStatus *status)
{
    if (status == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (find_net(handle) == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    keel_net_status_t ns = {.version = 1};
    keel_status_t st = keel_net_status(&ns);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st);
    }
    *status = mv_net(ns.state, ns.offline);
    return MV_STATUS_OKAY;
}

enum MvStatus mvGetNetworkReasons(enum MvNetworkReason *reasons, uint32_t *request_ref_count)
{
    if (reasons == NULL || request_ref_count == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    keel_net_status_t ns = {.version = 1};
    keel_status_t st = keel_net_status(&ns);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st);
    }
    uint32_t r = 0, count = 0;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_NETWORK; i++) {
        count += nets[i].handle != 0;
    }
    if (count != 0) {
        r |= MV_NETWORKREASON_USINGNETWORK;
    }
    if (!net_used) {
        r |= MV_NETWORKREASON_NEVERUSEDNETWORKAPI;
    }
    if (ns.wanted_by & KEEL_NET_WANTED_VISOR) {
        r |= MV_NETWORKREASON_COLDBOOTCONNECTION;
    }
    *reasons = (enum MvNetworkReason)r;
    *request_ref_count = count;
    return MV_STATUS_OKAY;
}

/* ---------------------------------------------------------------------------------------- */
/* Channels                                                                                 */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvOpenChannel(const struct MvOpenChannelParams *params, MvChannelHandle *handle)
{
    if (params == NULL || handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (params->version != 1) {
        return MV_STATUS_UNSUPPORTEDSTRUCTUREVERSION;
    }
    const struct MvSizedString *ep = &params->v1.endpoint;
    if (ep->length != 0 && ep->data == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    uint32_t kind;
    const char *endpoint = (const char *)ep->data;
    uint32_t endpoint_len = ep->length;
    switch (params->v1.channel_type) {
    case MV_CHANNELTYPE_HTTP:
        kind = KEEL_CHAN_KIND_HTTP;
        break;
    case MV_CHANNELTYPE_CONFIGFETCH:
        kind = KEEL_CHAN_KIND_CONFIG;
        break;
    case MV_CHANNELTYPE_MQTT:
        kind = KEEL_CHAN_KIND_MQTT;
        if (endpoint_len == 0) {
            endpoint = MV_COMPAT_MQTT_DEFAULT_PROFILE;
            endpoint_len = sizeof MV_COMPAT_MQTT_DEFAULT_PROFILE - 1u;
        }
        break;
    default:
        return MV_STATUS_UNKNOWNCHANNELTYPE;
    }
    if (kind != KEEL_CHAN_KIND_MQTT && endpoint_len != 0) {
        return MV_STATUS_UNKNOWNCHANNELENDPOINT;
    }
    if (endpoint_len > KEEL_CHAN_MAX_ENDPOINT) {
        return MV_STATUS_UNKNOWNCHANNELENDPOINT;
    }
    if (params->v1.receive_buffer == NULL || params->v1.send_buffer == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    enum MvStatus st = setup_ring();
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    uint32_t m = lock();
    int32_t slot = -1;
    for (uint32_t i = 0; i < MV_COMPAT_MAX_CHANNELS && slot < 0; i++) {
        if (chans[i].handle == 0) {
            slot = (int32_t)i;
        }
    }
    uint32_t keel = 0;
    if (find_center(params->v1.notification_handle) == NULL || find_net(params->v1.network_handle) == NULL) {
        st = MV_STATUS_INVALIDHANDLE;
    } else if (slot < 0) {
        st = MV_STATUS_TOOMANYCHANNELS;
    } else {
        uint32_t h = new_handle(H_CHAN, (uint32_t)slot);
        keel_chan_open_t p;
        keel_chan_open_init(&p, kind, h, params->v1.receive_buffer, params->v1.receive_buffer_len,
                            params->v1.send_buffer, params->v1.send_buffer_len, endpoint, endpoint_len);
        keel_status_t k = keel_chan_open(&p, &keel);
        st = k == KEEL_STATUS_INVALID_ARGUMENT ? MV_STATUS_UNKNOWNCHANNELENDPOINT : mv_status(k);
        if (st == MV_STATUS_OKAY) {
            struct chan *c = &chans[slot];
            c->keel = keel;
            c->center = params->v1.notification_handle;
            c->tag = params->v1.notification_tag;
            c->type = params->v1.channel_type;
            c->rx = params->v1.receive_buffer;
            c->read_off = 0;
            c->sent = 0;
            c->session = KEEL_MSG_MQTT_SESSION_CONNECTED;
            c->handle = h;
            *handle = h;
        }
    }
    unlock(m);
    return st;
}

enum MvStatus mvCloseChannel(MvChannelHandle *handle)
{
    if (handle == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    uint32_t m = lock();
    struct chan *c = find_chan(*handle);
    if (c != NULL) {
        (void)keel_chan_close(&c->keel);
        c->handle = 0;
    }
    unlock(m);
    return closed(handle, c != NULL);
}

enum MvStatus mvGetChannelClosureReason(MvChannelHandle handle, enum MvClosureReason *reason_out)
{
    if (reason_out == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    struct chan *c = find_chan(handle);
    if (c == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    keel_chan_info_t info = {.version = 1};
    keel_status_t st = keel_chan_info(c->keel, &info);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st);
    }
    *reason_out = info.state == KEEL_CHAN_STATE_CLOSED ? mv_closure(info.reason) : MV_CLOSUREREASON_NONE;
    return MV_STATUS_OKAY;
}

/* The oldest message of channel `c`: where it is (*msg, *len). */
static enum MvStatus head_raw(const struct chan *c, const uint8_t **msg, uint32_t *len)
{
    keel_chan_msg_t mi = {.version = 1};
    keel_status_t st = keel_chan_recv(c->keel, &mi);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st); /* NO_DATA: RESPONSENOTPRESENT; CHANNEL_CLOSED: CHANNELCLOSED */
    }
    *msg = keel_chan_msg_ptr(c->rx, &mi);
    *len = mi.len;
    return MV_STATUS_OKAY;
}

/* head_raw() of the channel `handle` (INVALIDHANDLE if there is none); *cp: the channel. */
static enum MvStatus chan_head_raw(MvChannelHandle handle, struct chan **cp, const uint8_t **msg, uint32_t *len)
{
    struct chan *c = find_chan(handle);
    if (c == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    *cp = c;
    return head_raw(c, msg, len);
}

/* The oldest message, decoded. MQTT channels: Keel's own messages (session status, errors)
 * and malformed ones are consumed on the way (the app never sees them). */
static enum MvStatus head(struct chan *c, keel_msg_t *m)
{
    for (int tries = 0; tries < 64; tries++) {
        const uint8_t *msg;
        uint32_t len;
        enum MvStatus st = head_raw(c, &msg, &len);
        if (st != MV_STATUS_OKAY) {
            return st;
        }
        int r = keel_msg_decode(msg, len, m);
        if (c->type != MV_CHANNELTYPE_MQTT) {
            return r == 0 ? MV_STATUS_OKAY : MV_STATUS_REQUESTUNSUCCESSFUL;
        }
        if (r == 0 && m->type != KEEL_MSG_MQTT_STATUS && m->type != KEEL_MSG_ERROR) {
            return MV_STATUS_OKAY;
        }
        if (r == 0 && m->type == KEEL_MSG_MQTT_STATUS) {
            c->session = m->u.mqtt_status.state;
        }
        c->read_off = 0;
        (void)keel_chan_consume(c->keel);
    }
    return MV_STATUS_RESPONSENOTPRESENT;
}

enum MvStatus mvReadChannel(MvChannelHandle handle, uint8_t **read_pointer_out, uint32_t *length_out)
{
    if (read_pointer_out == NULL || length_out == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    struct chan *c;
    const uint8_t *msg;
    uint32_t len;
    enum MvStatus st = chan_head_raw(handle, &c, &msg, &len);
    if (st == MV_STATUS_RESPONSENOTPRESENT) {
        *read_pointer_out = NULL;
        *length_out = 0;
        return MV_STATUS_OKAY;
    }
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    uint32_t off = c->read_off < len ? c->read_off : len;
    *read_pointer_out = (uint8_t *)(uintptr_t)(msg + off);
    *length_out = len - off;
    return MV_STATUS_OKAY;
}

enum MvStatus mvReadChannelComplete(MvChannelHandle handle, uint32_t consumed)
{
    struct chan *c;
    const uint8_t *msg;
    uint32_t len;
    enum MvStatus st = chan_head_raw(handle, &c, &msg, &len);
    if (st == MV_STATUS_RESPONSENOTPRESENT) {
        return MV_STATUS_OKAY;
    }
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (consumed >= len - c->read_off) {
        c->read_off = 0;
        return mv_status(keel_chan_consume(c->keel));
    }
    c->read_off += consumed;
    return MV_STATUS_OKAY;
}

static enum MvStatus send_raw(struct chan *c, const uint8_t *data, uint32_t len)
{
    keel_status_t st = keel_chan_send(c->keel, data, len);
    if (st == KEEL_STATUS_WOULD_BLOCK && c->type == MV_CHANNELTYPE_MQTT) {
        return MV_STATUS_RATELIMITED; /* retry after CHANNELDATAWRITESPACE */
    }
    return mv_status(st);
}

enum MvStatus mvWriteChannel(MvChannelHandle handle, const uint8_t *data, uint32_t len, uint32_t *available)
{
    struct chan *c = find_chan(handle);
    if (c == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    if (len != 0) {
        if (data == NULL) {
            return MV_STATUS_PARAMETERFAULT;
        }
        enum MvStatus st = send_raw(c, data, len);
        if (st != MV_STATUS_OKAY) {
            return st;
        }
    }
    if (available != NULL) {
        keel_chan_info_t info = {.version = 1};
        if (keel_chan_info(c->keel, &info) != KEEL_STATUS_OK) {
            return MV_STATUS_LATEFAULT;
        }
        *available = info.tx_free;
    }
    return MV_STATUS_OKAY;
}

enum MvStatus mvWriteChannelStream(MvChannelHandle handle, const uint8_t *data, uint32_t len, uint32_t *written)
{
    enum MvStatus st = mvWriteChannel(handle, data, len, NULL);
    if (written != NULL) {
        *written = st == MV_STATUS_OKAY ? len : 0;
    }
    return st;
}

static keel_msg_str_t str(struct MvSizedString s)
{
    keel_msg_str_t r = {s.data, s.length};
    return r;
}

static enum MvStatus copy_out(struct MvSizedStringBuffer b, keel_msg_str_t v)
{
    if (b.length != NULL) {
        *b.length = v.len;
    }
    uint32_t n = v.len <= b.size ? v.len : b.size;
    if (n != 0 && b.data == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    copy(b.data, v.data, n);
    return n == v.len ? MV_STATUS_OKAY : MV_STATUS_INVALIDBUFFERSIZE;
}

static struct chan *chan_of_type(MvChannelHandle handle, uint32_t type)
{
    struct chan *c = find_chan(handle);
    return (c != NULL && c->type == type) ? c : NULL;
}

/* The first checks of a call on a channel of type `type`: the handle (INVALIDHANDLE), then the
 * caller's other arguments (`args_ok`, else PARAMETERFAULT). *cp: the channel. */
static enum MvStatus typed_chan(MvChannelHandle handle, uint32_t type, int args_ok, struct chan **cp)
{
    struct chan *c = chan_of_type(handle, type);
    if (c == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    if (!args_ok) {
        return MV_STATUS_PARAMETERFAULT;
    }
    *cp = c;
    return MV_STATUS_OKAY;
}

/* typed_chan(), then the channel's oldest message, decoded (head()). `cp` may be NULL. */
static enum MvStatus chan_head(MvChannelHandle handle, uint32_t type, int args_ok, struct chan **cp, keel_msg_t *m)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, type, args_ok, &c);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (cp != NULL) {
        *cp = c;
    }
    return head(c, m);
}

/* Starts encoding a request into `scratch`, with its header. Takes the lock: end_request()
 * releases it. */
static uint32_t begin_request(keel_msg_writer_t *w, uint32_t type, uint32_t flags, uint32_t count, uint32_t max,
                              uint32_t id)
{
    uint32_t m = lock();
    keel_msg_w_init(w, scratch, sizeof scratch);
    keel_msg_w_header(w, type, flags, count, max, id);
    return m;
}

/* Sends the request encoded in `w` (begin_request()) and releases the lock `m`. `one_shot`: the
 * channel carries one request (HTTP, config), which is now sent. */
static enum MvStatus end_request(struct chan *c, const keel_msg_writer_t *w, uint32_t m, int one_shot)
{
    int32_t n = keel_msg_w_finish(w);
    enum MvStatus st;
    if (n == KEEL_MSG_ERR_BUFFER_TOO_SMALL) {
        st = MV_STATUS_INVALIDBUFFERSIZE;
    } else if (n < 0) {
        st = MV_STATUS_PARAMETERFAULT;
    } else {
        st = send_raw(c, scratch, (uint32_t)n);
    }
    if (st == MV_STATUS_OKAY && one_shot) {
        c->sent = 1;
    }
    unlock(m);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* HTTP                                                                                     */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvSendHttpRequest(MvChannelHandle handle, const struct MvHttpRequest *request)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_HTTP,
                                  request != NULL && (request->num_headers == 0 || request->headers != NULL), &c);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (c->sent) {
        return MV_STATUS_REQUESTALREADYSENT;
    }
    if (request->num_headers > KEEL_MSG_MAX_HTTP_HEADERS) {
        return MV_STATUS_TOOMANYELEMENTS;
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_HTTP_REQUEST, 0, request->num_headers, KEEL_MSG_MAX_HTTP_HEADERS, 0);
    keel_msg_w_str(&w, str(request->method));
    keel_msg_w_str(&w, str(request->url));
    keel_msg_w_u32(&w, request->timeout_ms);
    for (uint32_t i = 0; i < request->num_headers; i++) {
        keel_msg_str_t h = {request->headers[i].data, request->headers[i].length};
        keel_msg_w_str(&w, h);
    }
    keel_msg_w_blob(&w, str(request->body));
    return end_request(c, &w, m, 1);
}

enum MvStatus mvReadHttpResponseData(MvChannelHandle handle, struct MvHttpResponseData *out)
{
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_HTTP, out != NULL, NULL, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (m.type == KEEL_MSG_ERROR) {
        out->result = mv_http_result(m.u.error.code);
        out->status_code = 0;
        out->num_headers = 0;
        out->body_length = 0;
        return MV_STATUS_OKAY;
    }
    if (m.type != KEEL_MSG_HTTP_RESPONSE) {
        return MV_STATUS_REQUESTUNSUCCESSFUL;
    }
    out->result = mv_http_result(m.u.http_response.result);
    out->status_code = m.u.http_response.status;
    out->num_headers = m.count;
    out->body_length = m.u.http_response.body.len;
    return MV_STATUS_OKAY;
}

enum MvStatus mvReadHttpResponseHeader(MvChannelHandle handle, uint32_t header_index, uint8_t *buf, uint32_t size)
{
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_HTTP, buf != NULL || size == 0, NULL, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (m.type != KEEL_MSG_HTTP_RESPONSE) {
        return m.type == KEEL_MSG_ERROR ? MV_STATUS_INDEXINVALID : MV_STATUS_REQUESTUNSUCCESSFUL;
    }
    keel_msg_str_t h;
    if (keel_msg_http_header(&m, header_index, &h) != 0) {
        return MV_STATUS_INDEXINVALID;
    }
    if (h.len > size) {
        return MV_STATUS_INVALIDBUFFERSIZE;
    }
    copy(buf, h.data, h.len);
    if (h.len < size) {
        buf[h.len] = 0;
    }
    return MV_STATUS_OKAY;
}

enum MvStatus mvReadHttpResponseBody(MvChannelHandle handle, uint32_t offset, uint8_t *buf, uint32_t size)
{
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_HTTP, buf != NULL || size == 0, NULL, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    keel_msg_str_t body = {NULL, 0};
    if (m.type == KEEL_MSG_HTTP_RESPONSE) {
        body = m.u.http_response.body;
    } else if (m.type != KEEL_MSG_ERROR) {
        return MV_STATUS_REQUESTUNSUCCESSFUL;
    }
    if (offset > body.len) {
        return MV_STATUS_OFFSETINVALID;
    }
    uint32_t n = body.len - offset;
    copy(buf, body.data + offset, n < size ? n : size);
    return MV_STATUS_OKAY;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvSendConfigFetchRequest(MvChannelHandle handle, const struct MvConfigKeyFetchParams *request)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_CONFIGFETCH,
                                  request != NULL && (request->num_items == 0 || request->keys_to_fetch != NULL), &c);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (c->sent) {
        return MV_STATUS_REQUESTALREADYSENT;
    }
    if (request->num_items > KEEL_MSG_MAX_CONFIG_KEYS) {
        return MV_STATUS_TOOMANYCONFIGKEYS;
    }
    for (uint32_t i = 0; i < request->num_items; i++) {
        const struct MvConfigKeyToFetch *k = &request->keys_to_fetch[i];
        if ((uint32_t)k->scope > MV_CONFIGKEYFETCHSCOPE_DEVICE) {
            return MV_STATUS_UNKNOWNCONFIGSCOPE;
        }
        if ((uint32_t)k->store > MV_CONFIGKEYFETCHSTORE_CONFIG) {
            return MV_STATUS_UNKNOWNCONFIGSTORE;
        }
        if (k->key.length == 0 || k->key.data == NULL) {
            return MV_STATUS_INVALIDCONFIGKEY;
        }
        for (uint32_t j = 0; j < k->key.length; j++) {
            if (k->key.data[j] < 0x21 || k->key.data[j] > 0x7E) {
                return MV_STATUS_INVALIDCONFIGKEY;
            }
        }
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_CONFIG_FETCH, 0, request->num_items, KEEL_MSG_MAX_CONFIG_KEYS, 0);
    for (uint32_t i = 0; i < request->num_items; i++) {
        const struct MvConfigKeyToFetch *k = &request->keys_to_fetch[i];
        keel_msg_w_u8(&w, (uint32_t)k->scope);
        keel_msg_w_u8(&w, (uint32_t)k->store);
        keel_msg_w_str(&w, str(k->key));
    }
    return end_request(c, &w, m, 1);
}

enum MvStatus mvReadConfigFetchResponseData(MvChannelHandle handle, struct MvConfigResponseData *out)
{
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_CONFIGFETCH, out != NULL, NULL, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (m.type != KEEL_MSG_CONFIG_RESULT) {
        return MV_STATUS_REQUESTUNSUCCESSFUL;
    }
    uint32_t r = m.u.config_result.result;
    out->result = r <= KEEL_MSG_CONFIG_TOO_MANY_KEYS ? (enum MvConfigFetchResult)r : MV_CONFIGFETCHRESULT_BADREQUEST;
    out->num_items = m.count;
    return MV_STATUS_OKAY;
}

enum MvStatus mvReadConfigResponseItem(MvChannelHandle handle, const struct MvConfigResponseReadItemParams *params)
{
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_CONFIGFETCH, params != NULL, NULL, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (m.type != KEEL_MSG_CONFIG_RESULT) {
        return MV_STATUS_REQUESTUNSUCCESSFUL;
    }
    uint8_t r;
    keel_msg_str_t v;
    if (keel_msg_config_item(&m, params->item_index, &r, &v) != 0) {
        return MV_STATUS_INDEXINVALID;
    }
    if (params->result != NULL) {
        switch (r) {
        case KEEL_MSG_CONFIG_OK: *params->result = MV_CONFIGKEYFETCHRESULT_OK; break;
        case KEEL_MSG_CONFIG_NOT_FOUND: *params->result = MV_CONFIGKEYFETCHRESULT_KEYNOTFOUND; break;
        case KEEL_MSG_CONFIG_INVALID_KEY: *params->result = MV_CONFIGKEYFETCHRESULT_INVALIDKEY; break;
        default: *params->result = MV_CONFIGKEYFETCHRESULT_SERVERERROR; break;
        }
    }
    return copy_out(params->buf, v);
}

/* ---------------------------------------------------------------------------------------- */
/* MQTT                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static uint32_t clamp(uint32_t v, uint32_t max)
{
    return v > max ? max : v;
}

enum MvStatus mvMqttRequestConnect(MvChannelHandle handle, const struct MvMqttConnectRequest *request)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_MQTT, request != NULL, &c);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    const struct MvMqttWill *w0 = request->will;
    if (w0 != NULL && (w0->topic.length == 0 || w0->topic.data == NULL)) {
        return MV_STATUS_REQUIREDELEMENTMISSING;
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_MQTT_CONNECT, (request->clean_start ? 1u : 0u) | (w0 != NULL ? 2u : 0u),
                               0, 0, 0);
    keel_msg_w_u16(&w, clamp(request->keepalive, 0xFFFFu));
    if (w0 != NULL) {
        keel_msg_w_str(&w, str(w0->topic));
        keel_msg_w_blob(&w, str(w0->payload));
        keel_msg_w_u8(&w, clamp(w0->qos, 0xFFu));
        keel_msg_w_u8(&w, w0->retain ? 1u : 0u);
    }
    return end_request(c, &w, m, 0);
}

/* The checks of the number of topics of an MQTT (un)subscribe. */
static enum MvStatus topic_count(uint32_t n)
{
    if (n > KEEL_MSG_MAX_MQTT_TOPICS) {
        return MV_STATUS_TOOMANYELEMENTS;
    }
    return n == 0 ? MV_STATUS_REQUIREDELEMENTMISSING : MV_STATUS_OKAY;
}

enum MvStatus mvMqttRequestSubscribe(MvChannelHandle handle, const struct MvMqttSubscribeRequest *request)
{
    struct chan *c;
    int args_ok = request != NULL && (request->num_subscriptions == 0 || request->subscriptions != NULL);
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_MQTT, args_ok, &c);
    if (st != MV_STATUS_OKAY || (st = topic_count(request->num_subscriptions)) != MV_STATUS_OKAY) {
        return st;
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_MQTT_SUBSCRIBE, 0, request->num_subscriptions, KEEL_MSG_MAX_MQTT_TOPICS,
                               request->correlation_id);
    for (uint32_t i = 0; i < request->num_subscriptions; i++) {
        const struct MvMqttSubscription *s = &request->subscriptions[i];
        keel_msg_w_str(&w, str(s->topic));
        keel_msg_w_u8(&w, clamp(s->desired_qos, 0xFFu));
    }
    return end_request(c, &w, m, 0);
}

enum MvStatus mvMqttRequestUnsubscribe(MvChannelHandle handle, const struct MvMqttUnsubscribeRequest *request)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_MQTT,
                                  request != NULL && (request->num_topics == 0 || request->topics != NULL), &c);
    if (st != MV_STATUS_OKAY || (st = topic_count(request->num_topics)) != MV_STATUS_OKAY) {
        return st;
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_MQTT_UNSUBSCRIBE, 0, request->num_topics, KEEL_MSG_MAX_MQTT_TOPICS,
                               request->correlation_id);
    for (uint32_t i = 0; i < request->num_topics; i++) {
        keel_msg_w_str(&w, str(request->topics[i]));
    }
    return end_request(c, &w, m, 0);
}

enum MvStatus mvMqttRequestPublish(MvChannelHandle handle, const struct MvMqttPublishRequest *request)
{
    struct chan *c;
    enum MvStatus st = typed_chan(handle, MV_CHANNELTYPE_MQTT, request != NULL, &c);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    keel_msg_writer_t w;
    uint32_t m = begin_request(&w, KEEL_MSG_MQTT_PUBLISH, request->retain ? 1u : 0u, 0, 0, request->correlation_id);
    keel_msg_w_u8(&w, clamp(request->desired_qos, 0xFFu));
    keel_msg_w_str(&w, str(request->topic));
    keel_msg_w_blob(&w, str(request->payload));
    return end_request(c, &w, m, 0);
}

/* An MQTT request that is only a header (acknowledge, disconnect), encoded on the stack. */
static enum MvStatus mqtt_bare(MvChannelHandle handle, uint32_t type, uint32_t id)
{
    struct chan *c = chan_of_type(handle, MV_CHANNELTYPE_MQTT);
    if (c == NULL) {
        return MV_STATUS_INVALIDHANDLE;
    }
    uint8_t msg[KEEL_MSG_HEADER_LEN];
    keel_msg_writer_t w;
    keel_msg_w_init(&w, msg, sizeof msg);
    keel_msg_w_header(&w, type, 0, 0, 0, id);
    int32_t n = keel_msg_w_finish(&w);
    return n < 0 ? MV_STATUS_INTERNALERROR : send_raw(c, msg, (uint32_t)n);
}

enum MvStatus mvMqttAcknowledgeMessage(MvChannelHandle handle, uint32_t correlation_id)
{
    return mqtt_bare(handle, KEEL_MSG_MQTT_ACK, correlation_id);
}

enum MvStatus mvMqttRequestDisconnect(MvChannelHandle handle)
{
    return mqtt_bare(handle, KEEL_MSG_MQTT_DISCONNECT, 0);
}

enum MvStatus mvMqttGetNextReadableDataType(MvChannelHandle handle, enum MvMqttReadableDataType *data_type)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_MQTT, data_type != NULL, &c, &m);
    if (st == MV_STATUS_RESPONSENOTPRESENT) {
        *data_type = MV_MQTTREADABLEDATATYPE_NONE;
        return MV_STATUS_OKAY;
    }
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    switch (m.type) {
    case KEEL_MSG_MQTT_MESSAGE: *data_type = MV_MQTTREADABLEDATATYPE_MESSAGERECEIVED; break;
    case KEEL_MSG_MQTT_LOST: *data_type = MV_MQTTREADABLEDATATYPE_MESSAGELOST; break;
    case KEEL_MSG_MQTT_CONNECT_RESULT: *data_type = MV_MQTTREADABLEDATATYPE_CONNECTRESPONSE; break;
    case KEEL_MSG_MQTT_SUBSCRIBE_RESULT: *data_type = MV_MQTTREADABLEDATATYPE_SUBSCRIBERESPONSE; break;
    case KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT: *data_type = MV_MQTTREADABLEDATATYPE_UNSUBSCRIBERESPONSE; break;
    case KEEL_MSG_MQTT_PUBLISH_RESULT: *data_type = MV_MQTTREADABLEDATATYPE_PUBLISHRESPONSE; break;
    case KEEL_MSG_MQTT_DISCONNECT_RESULT: *data_type = MV_MQTTREADABLEDATATYPE_DISCONNECTRESPONSE; break;
    default:
        /* Not an answer of an MQTT channel: drop it. */
        (void)keel_chan_consume(c->keel);
        *data_type = MV_MQTTREADABLEDATATYPE_NONE;
        break;
    }
    return MV_STATUS_OKAY;
}

/* The first steps of the MQTT readers: the output (`out_ok`, else PARAMETERFAULT), the handle
 * (INVALIDHANDLE), then the oldest message of the channel, which must be of type `type`
 * (WRONGDATAREQUESTED). The reader copies it out, then calls consume(). */
static enum MvStatus mqtt_head(MvChannelHandle handle, uint32_t type, int out_ok, struct chan **cp, keel_msg_t *m)
{
    if (!out_ok) {
        return MV_STATUS_PARAMETERFAULT;
    }
    enum MvStatus st = chan_head(handle, MV_CHANNELTYPE_MQTT, 1, cp, m);
    return (st == MV_STATUS_OKAY && m->type != type) ? MV_STATUS_WRONGDATAREQUESTED : st;
}

/* Consumes the message mqtt_head() returned; `st`: the reader's status, unless that is OKAY. */
static enum MvStatus consume(struct chan *c, enum MvStatus st)
{
    c->read_off = 0;
    keel_status_t k = keel_chan_consume(c->keel);
    return st != MV_STATUS_OKAY ? st : mv_status(k);
}

enum MvStatus mvMqttReadConnectResponse(MvChannelHandle handle, struct MvMqttConnectResponse *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_CONNECT_RESULT, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    out->request_state = (enum MvMqttRequestState)m.u.mqtt_connect_result.state;
    out->reason_code = m.u.mqtt_connect_result.reason;
    return consume(c, MV_STATUS_OKAY);
}

enum MvStatus mvMqttReadSubscribeResponse(MvChannelHandle handle, const struct MvMqttSubscribeResponse *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_SUBSCRIBE_RESULT, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (out->request_state != NULL) {
        *out->request_state = (enum MvMqttRequestState)m.u.mqtt_subscribe_result.state;
    }
    if (out->correlation_id != NULL) {
        *out->correlation_id = m.id;
    }
    uint32_t n = m.count <= out->reason_codes_size ? m.count : out->reason_codes_size;
    if (out->reason_codes == NULL) {
        n = 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        out->reason_codes[i] = m.u.mqtt_subscribe_result.codes.data[i];
    }
    if (out->reason_codes_len != NULL) {
        *out->reason_codes_len = n;
    }
    return consume(c, n == m.count ? MV_STATUS_OKAY : MV_STATUS_INVALIDBUFFERSIZE);
}

enum MvStatus mvMqttReadUnsubscribeResponse(MvChannelHandle handle, const struct MvMqttUnsubscribeResponse *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (out->request_state != NULL) {
        *out->request_state = (enum MvMqttRequestState)m.u.mqtt_unsubscribe_result.state;
    }
    if (out->correlation_id != NULL) {
        *out->correlation_id = m.id;
    }
    return consume(c, MV_STATUS_OKAY);
}

enum MvStatus mvMqttReadPublishResponse(MvChannelHandle handle, struct MvMqttPublishResponse *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_PUBLISH_RESULT, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    out->request_state = (enum MvMqttRequestState)m.u.mqtt_publish_result.state;
    out->correlation_id = m.id;
    out->reason_code = m.u.mqtt_publish_result.reason;
    return consume(c, MV_STATUS_OKAY);
}

enum MvStatus mvMqttReceiveMessage(MvChannelHandle handle, const struct MvMqttMessage *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_MESSAGE, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (out->correlation_id != NULL) {
        *out->correlation_id = m.id;
    }
    if (out->qos != NULL) {
        *out->qos = m.u.mqtt_message.qos;
    }
    if (out->retain != NULL) {
        *out->retain = m.u.mqtt_message.retain;
    }
    enum MvStatus a = copy_out(out->topic, m.u.mqtt_message.topic);
    enum MvStatus b = copy_out(out->payload, m.u.mqtt_message.payload);
    return consume(c, a != MV_STATUS_OKAY ? a : b);
}

enum MvStatus mvMqttReceiveLostMessageInfo(MvChannelHandle handle, const struct MvMqttLostMessageInfo *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_LOST, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    if (out->reason != NULL) {
        switch (m.u.mqtt_lost.reason) {
        case KEEL_MSG_MQTT_LOST_RATE_LIMITED: *out->reason = MV_MQTTLOSTMESSAGEREASON_RATELIMITED; break;
        case KEEL_MSG_MQTT_LOST_QUEUE_OVERFLOW: *out->reason = MV_MQTTLOSTMESSAGEREASON_SESSIONQUEUEOVERFLOW; break;
        default: *out->reason = MV_MQTTLOSTMESSAGEREASON_DEVICERECEIVEBUFFERTOOSMALL; break;
        }
    }
    if (out->message_len != NULL) {
        *out->message_len = m.u.mqtt_lost.len;
    }
    return consume(c, copy_out(out->topic, m.u.mqtt_lost.topic));
}

enum MvStatus mvMqttReadDisconnectResponse(MvChannelHandle handle, struct MvMqttDisconnectResponse *out)
{
    struct chan *c;
    keel_msg_t m;
    enum MvStatus st = mqtt_head(handle, KEEL_MSG_MQTT_DISCONNECT_RESULT, out != NULL, &c, &m);
    if (st != MV_STATUS_OKAY) {
        return st;
    }
    out->request_state = (enum MvMqttRequestState)m.u.mqtt_disconnect_result.state;
    out->disconnect_code = m.u.mqtt_disconnect_result.code;
    return consume(c, MV_STATUS_OKAY);
}

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvServerLoggingInit(uint8_t *buffer, uint32_t length_bytes)
{
    if (buffer == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (((uintptr_t)buffer & 3u) != 0) {
        return MV_STATUS_INVALIDBUFFERALIGNMENT;
    }
    if (length_bytes == 0) {
        return MV_STATUS_INVALIDBUFFERSIZE;
    }
    logging_ready = 1;
    return MV_STATUS_OKAY;
}

enum MvStatus mvServerLog(const uint8_t *message, uint16_t length_bytes)
{
    if (!logging_ready) {
        return MV_STATUS_UNAVAILABLE;
    }
    if (message == NULL && length_bytes != 0) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (length_bytes > KEEL_LOG_MAX_LEN) {
        return MV_STATUS_LOGMESSAGETOOLONG;
    }
    return mv_status(keel_log(KEEL_LOG_INFO, message, length_bytes));
}

/* ---------------------------------------------------------------------------------------- */
/* Restart, updates, power                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvRestart(enum MvRestartMode mode)
{
    if (in_handler()) {
        return MV_STATUS_UNAVAILABLE;
    }
    if (mode != MV_RESTARTMODE_AUTOAPPLYUPDATE) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (update_ready) {
        /* Does not return when the update is applied; if none is ready after all, restart. */
        (void)keel_update_apply();
    }
    return mv_status(keel_restart(0));
}

static enum MvStatus power(void)
{
    return in_handler() ? MV_STATUS_UNAVAILABLE : MV_STATUS_MICROVISORBUSY;
}

enum MvStatus mvPowerSave(enum MvPowerSavingMode mode)
{
    return (uint32_t)mode > MV_POWERSAVINGMODE_STOP3 ? MV_STATUS_PARAMETERFAULT : power();
}

enum MvStatus mvDeepSleep(enum MvDeepSleepMode mode)
{
    return (uint32_t)mode > MV_DEEPSLEEPMODE_SHUTDOWN ? MV_STATUS_PARAMETERFAULT : power();
}

enum MvStatus mvSystemLedEnable(uint32_t enable)
{
    (void)enable;
    return MV_STATUS_OKAY;
}

enum MvStatus mvGetWakeReason(enum MvWakeReason *reason)
{
    if (reason == NULL) {
        return MV_STATUS_PARAMETERFAULT;
    }
    if (in_handler()) {
        return MV_STATUS_UNAVAILABLE;
    }
    keel_boot_info_t b = {.version = 1};
    keel_update_info_t u = {.version = 1};
    keel_status_t st = keel_boot_info(&b);
    if (st != KEEL_STATUS_OK) {
        return mv_status(st);
    }
    if (keel_update_info(&u) == KEEL_STATUS_OK && u.on_trial && b.reason != KEEL_START_CRASH &&
        b.reason != KEEL_START_WATCHDOG) {
        *reason = MV_WAKEREASON_APPLICATIONUPDATE;
    } else if (b.reason == KEEL_START_COLD_BOOT) {
        *reason = MV_WAKEREASON_COLDBOOT;
    } else if (b.reason == KEEL_START_CRASH || b.reason == KEEL_START_WATCHDOG) {
        *reason = MV_WAKEREASON_APPLICATIONCRASH;
    } else {
        *reason = MV_WAKEREASON_REMOTEAPPLICATIONRESTART;
    }
    return MV_STATUS_OKAY;
}

/* ---------------------------------------------------------------------------------------- */
/* Fast interrupts: not supported                                                           */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvSetFastInterrupt(uint32_t irqn) { (void)irqn; return MV_STATUS_UNAVAILABLE; }
enum MvStatus mvClearFastInterrupt(uint32_t irqn) { (void)irqn; return MV_STATUS_UNAVAILABLE; }
enum MvStatus mvEnableFastInterrupt(uint32_t irqn) { (void)irqn; return MV_STATUS_UNAVAILABLE; }
enum MvStatus mvDisableFastInterrupt(uint32_t irqn) { (void)irqn; return MV_STATUS_UNAVAILABLE; }
enum MvStatus mvDisableAllFastInterrupts(void) { return MV_STATUS_UNAVAILABLE; }
enum MvStatus mvEnableAllFastInterrupts(void) { return MV_STATUS_UNAVAILABLE; }
