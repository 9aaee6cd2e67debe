/*
 * freertos-channels - FreeRTOS tasks using Keel channels concurrently (keel.h + keel_chan.h).
 *
 * A scripted workload with fixed counts, each task on its own channel(s) and buffers:
 *   http-a, http-b  HTTP_GETS (5) GETs of URL each, one channel per request, expect 200
 *   config          CONFIG_FETCHES (5) fetches of CONFIG_KEY, one channel per fetch, expect OK
 *   mqtt            one MQTT channel (profile "default"): connect, MQTT_PUBLISHES (10) QoS 1
 *                   publishes to sensor/<device-id>/rtos, every result COMPLETED, disconnect
 * The notification interrupt (line 80) is the dispatcher: it pops the Keel ring and routes each
 * record to the task that owns it by tag (channel tag = task number) with a FreeRTOS task
 * notification; network records wake every task. Tasks never rely on a notification alone: they
 * wait for one with a timeout and then look at the channel (keel_chan_recv / keel_chan_info),
 * so a lost record (ring overrun) only delays them. Every call goes through keel.h's wrappers,
 * which mask PRIMASK per call as the ABI's RTOS rule asks; no lock is needed around them.
 *
 * Log lines (INFO):
 *   freertos-channels: start device=<id> url=<URL>
 *   freertos-channels: ERROR <task> <step> status=<keel status> [detail]   (each failure)
 *   freertos-channels: PASS http=10/10 config=5/5 mqtt=10/10 records=<n> overruns=<n>
 * or
 *   freertos-channels: FAIL http=<ok>/<n> config=<ok>/<n> mqtt=<ok>/<n> records=<n> overruns=<n>
 */
#include <stdarg.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "task.h"

#include "keel.h"
#include "keel_chan.h"

#ifndef URL
#define URL "https://localhost:18444/hello"
#endif
#ifndef CONFIG_KEY
#define CONFIG_KEY "greeting"
#endif
#ifndef HTTP_GETS
#define HTTP_GETS 5u
#endif
#ifndef CONFIG_FETCHES
#define CONFIG_FETCHES 5u
#endif
#ifndef MQTT_PUBLISHES
#define MQTT_PUBLISHES 10u
#endif
#ifndef MQTT_PROFILE
#define MQTT_PROFILE "default"
#endif

#define NET_TAG 0x4E4554u
#define N_WORKERS 4u
#define WAIT_MS 30000u
#define STACK_WORDS 512u

/* ---------------------------------------------------------------------------------------- */
/* Logging (no libc)                                                                        */
/* ---------------------------------------------------------------------------------------- */

static void logf(const char *fmt, ...)
{
    char b[256];
    uint32_t n = 0;
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p != '\0' && n < sizeof b; p++) {
        if (*p != '%') {
            b[n++] = *p;
            continue;
        }
        p++;
        if (*p == 's') {
            for (const char *s = va_arg(ap, const char *); *s != '\0' && n < sizeof b; s++) {
                b[n++] = *s;
            }
        } else if (*p == 'u') {
            char t[10];
            int i = 0;
            unsigned v = va_arg(ap, unsigned);
            do {
                t[i++] = (char)('0' + v % 10u);
                v /= 10u;
            } while (v != 0);
            while (i > 0 && n < sizeof b) {
                b[n++] = t[--i];
            }
        } else if (*p == '\0') {
            break;
        }
    }
    va_end(ap);
    (void)keel_log(KEEL_LOG_INFO, (const uint8_t *)b, n);
}

/* ---------------------------------------------------------------------------------------- */
/* Dispatcher                                                                               */
/* ---------------------------------------------------------------------------------------- */

static keel_notify_ring_t ring;
static TaskHandle_t workers[N_WORKERS + 1]; /* by tag; 0 unused */
static TaskHandle_t reporter;
static volatile uint32_t records, overruns, net_state;

/* Line 80: every record to the task that owns it (priority 0xC0, below
 * configMAX_SYSCALL_INTERRUPT_PRIORITY, so the FromISR calls are allowed). */
void IRQ80_Handler(void)
{
    BaseType_t woken = pdFALSE;
    keel_notify_record_t r;
    while (keel_notify_pop(&ring, &r)) {
        records++;
        switch (r.kind) {
        case KEEL_NOTIFY_CHANNEL_READABLE:
        case KEEL_NOTIFY_CHANNEL_WRITABLE:
        case KEEL_NOTIFY_CHANNEL_CLOSED:
            if (r.tag >= 1 && r.tag <= N_WORKERS && workers[r.tag] != NULL) {
                vTaskNotifyGiveFromISR(workers[r.tag], &woken);
            }
            break;
        case KEEL_NOTIFY_OVERRUN:   /* records were lost: everyone looks again */
        case KEEL_NOTIFY_NET_STATUS:
            if (r.kind == KEEL_NOTIFY_NET_STATUS) {
                net_state = KEEL_NOTIFY_NET_STATE(r.value);
            } else {
                overruns++;
            }
            for (uint32_t i = 1; i <= N_WORKERS; i++) {
                if (workers[i] != NULL) {
                    vTaskNotifyGiveFromISR(workers[i], &woken);
                }
            }
            break;
        default:
            break;
        }
    }
    portYIELD_FROM_ISR(woken);
}

/* ---------------------------------------------------------------------------------------- */
/* Workers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

struct worker {
    const char *name;
    uint32_t tag;
    uint32_t ok, total;
    uint8_t rx[2048] __attribute__((aligned(4)));
    uint8_t tx[1024] __attribute__((aligned(4)));
    uint8_t msg[512] __attribute__((aligned(4)));
    StaticTask_t tcb;
    StackType_t stack[STACK_WORDS];
};

/* Zero-initialised (.bss); named in start(). */
static struct worker w_http_a, w_http_b, w_config, w_mqtt;
static char device[KEEL_DEVICE_ID_LEN + 1];

static void error(const struct worker *w, const char *step, keel_status_t st)
{
    logf("freertos-channels: ERROR %s %s status=%s", w->name, step, keel_status_name(st));
}

static void wait_connected(void)
{
    for (;;) {
        keel_net_status_t ns = {.version = 1};
        if (keel_net_status(&ns) == KEEL_STATUS_OK && ns.state == KEEL_NET_STATE_CONNECTED) {
            return;
        }
        (void)ulTaskNotifyTake(pdTRUE, pdMS_TO_TICKS(1000));
    }
}

/* Opens a channel, retrying while the network is down or opens are rate limited. */
static keel_status_t open_channel(struct worker *w, uint32_t kind, const char *endpoint, uint32_t *h)
{
    uint32_t ep_len = 0;
    while (endpoint != NULL && endpoint[ep_len] != '\0') {
        ep_len++;
    }
    keel_chan_open_t p;
    keel_chan_open_init(&p, kind, w->tag, w->rx, sizeof w->rx, w->tx, sizeof w->tx, endpoint, ep_len);
    for (int attempt = 0; attempt < 20; attempt++) {
        keel_status_t st = keel_chan_open(&p, h);
        if (st != KEEL_STATUS_NETWORK_NOT_CONNECTED && st != KEEL_STATUS_RATE_LIMITED &&
            st != KEEL_STATUS_TOO_MANY_CHANNELS) {
            return st;
        }
        wait_connected();
        vTaskDelay(pdMS_TO_TICKS(100));
    }
    return KEEL_STATUS_NETWORK_NOT_CONNECTED;
}

/* Sends one message, waiting while the transmit buffer is full or opens are rate limited. */
static keel_status_t send(uint32_t h, const uint8_t *msg, int32_t len)
{
    if (len < 0) {
        return KEEL_STATUS_INVALID_BUFFER_SIZE;
    }
    for (int attempt = 0; attempt < 300; attempt++) {
        keel_status_t st = keel_chan_send(h, msg, (uint32_t)len);
        if (st != KEEL_STATUS_WOULD_BLOCK && st != KEEL_STATUS_RATE_LIMITED) {
            return st;
        }
        (void)ulTaskNotifyTake(pdTRUE, pdMS_TO_TICKS(100));
    }
    return KEEL_STATUS_WOULD_BLOCK;
}

/* Waits for the next message on channel h; decodes it into *m. The caller consumes it. */
static keel_status_t receive(struct worker *w, uint32_t h, keel_msg_t *m)
{
    TickType_t start = xTaskGetTickCount();
    for (;;) {
        keel_chan_msg_t mi = {.version = 1};
        keel_status_t st = keel_chan_recv(h, &mi);
        if (st == KEEL_STATUS_OK) {
            if (keel_msg_decode(keel_chan_msg_ptr(w->rx, &mi), mi.len, m) != 0) {
                (void)keel_chan_consume(h);
                return KEEL_STATUS_INTERNAL_ERROR; /* malformed: reported as such */
            }
            return KEEL_STATUS_OK;
        }
        if (st != KEEL_STATUS_NO_DATA) {
            return st;
        }
        if (xTaskGetTickCount() - start > pdMS_TO_TICKS(WAIT_MS)) {
            return KEEL_STATUS_NO_DATA;
        }
        (void)ulTaskNotifyTake(pdTRUE, pdMS_TO_TICKS(500));
    }
}

static void http_task(void *arg)
{
    struct worker *w = arg;
    wait_connected();
    for (uint32_t i = 0; i < w->total; i++) {
        uint32_t h = 0;
        keel_status_t st = open_channel(w, KEEL_CHAN_KIND_HTTP, NULL, &h);
        if (st != KEEL_STATUS_OK) {
            error(w, "open", st);
            continue;
        }
        keel_msg_str_t hdr = KEEL_MSG_STR("X-Keel-Task: rtos");
        int32_t n = keel_msg_http_request(w->msg, sizeof w->msg, KEEL_MSG_STR("GET"), KEEL_MSG_STR(URL), 10000,
                                          &hdr, 1, KEEL_MSG_STR(""));
        st = send(h, w->msg, n);
        keel_msg_t m;
        if (st == KEEL_STATUS_OK) {
            st = receive(w, h, &m);
        }
        if (st != KEEL_STATUS_OK) {
            error(w, "request", st);
        } else if (m.type != KEEL_MSG_HTTP_RESPONSE || m.u.http_response.result != KEEL_MSG_HTTP_OK ||
                   m.u.http_response.status != 200) {
            logf("freertos-channels: ERROR %s response type=%u result=%u status=%u", w->name, m.type,
                 m.type == KEEL_MSG_HTTP_RESPONSE ? m.u.http_response.result : m.u.error.code,
                 m.type == KEEL_MSG_HTTP_RESPONSE ? m.u.http_response.status : 0u);
        } else {
            w->ok++;
        }
        st = keel_chan_close(&h);
        if (st != KEEL_STATUS_OK || h != 0) {
            error(w, "close", st);
        }
    }
    xTaskNotifyGive(reporter);
    vTaskSuspend(NULL);
}

static void config_task(void *arg)
{
    struct worker *w = arg;
    wait_connected();
    for (uint32_t i = 0; i < w->total; i++) {
        uint32_t h = 0;
        keel_status_t st = open_channel(w, KEEL_CHAN_KIND_CONFIG, NULL, &h);
        if (st != KEEL_STATUS_OK) {
            error(w, "open", st);
            continue;
        }
        keel_msg_key_t key = {KEEL_MSG_CONFIG_SCOPE_ACCOUNT, KEEL_MSG_CONFIG_STORE_CONFIG, KEEL_MSG_STR(CONFIG_KEY)};
        st = send(h, w->msg, keel_msg_config_fetch(w->msg, sizeof w->msg, &key, 1));
        keel_msg_t m;
        if (st == KEEL_STATUS_OK) {
            st = receive(w, h, &m);
        }
        uint8_t item = 0xFF;
        keel_msg_str_t value;
        if (st != KEEL_STATUS_OK) {
            error(w, "fetch", st);
        } else if (m.type != KEEL_MSG_CONFIG_RESULT || m.u.config_result.result != KEEL_MSG_CONFIG_OK ||
                   keel_msg_config_item(&m, 0, &item, &value) != 0 || item != KEEL_MSG_CONFIG_OK) {
            logf("freertos-channels: ERROR %s result type=%u item=%u", w->name, m.type, item);
        } else {
            w->ok++;
        }
        st = keel_chan_close(&h);
        if (st != KEEL_STATUS_OK || h != 0) {
            error(w, "close", st);
        }
    }
    xTaskNotifyGive(reporter);
    vTaskSuspend(NULL);
}

/* The next MQTT answer that is not a session status line. */
static keel_status_t mqtt_next(struct worker *w, uint32_t h, keel_msg_t *m)
{
    for (;;) {
        keel_status_t st = receive(w, h, m);
        if (st != KEEL_STATUS_OK || m->type != KEEL_MSG_MQTT_STATUS) {
            return st;
        }
        (void)keel_chan_consume(h);
    }
}

static void mqtt_task(void *arg)
{
    struct worker *w = arg;
    wait_connected();
    uint32_t h = 0;
    keel_msg_t m;
    keel_status_t st = open_channel(w, KEEL_CHAN_KIND_MQTT, MQTT_PROFILE, &h);
    if (st != KEEL_STATUS_OK) {
        error(w, "open", st);
        goto done;
    }
    st = send(h, w->msg, keel_msg_mqtt_connect(w->msg, sizeof w->msg, 1, 60, NULL));
    if (st == KEEL_STATUS_OK) {
        st = mqtt_next(w, h, &m);
    }
    if (st != KEEL_STATUS_OK || m.type != KEEL_MSG_MQTT_CONNECT_RESULT ||
        m.u.mqtt_connect_result.state != KEEL_MSG_MQTT_COMPLETED) {
        error(w, "connect", st);
        goto close;
    }
    (void)keel_chan_consume(h);

    char topic[64] = "sensor/";
    uint32_t tl = 7;
    for (uint32_t i = 0; device[i] != '\0' && tl < sizeof topic - 6; i++) {
        topic[tl++] = device[i];
    }
    for (const char *s = "/rtos"; *s != '\0'; s++) {
        topic[tl++] = *s;
    }
    keel_msg_str_t t = {(const uint8_t *)topic, tl};
    /* All publishes are queued first (the transmit buffer holds several), then the results are
     * collected in any order. */
    uint32_t sent = 0, done_ids = 0;
    for (uint32_t id = 1; id <= w->total; id++) {
        char payload[16] = "{\"n\":";
        uint32_t pl = 5;
        payload[pl++] = (char)('0' + id / 10u % 10u);
        payload[pl++] = (char)('0' + id % 10u);
        payload[pl++] = '}';
        keel_msg_str_t p = {(const uint8_t *)payload, pl};
        st = send(h, w->msg, keel_msg_mqtt_publish(w->msg, sizeof w->msg, id, 1, 0, t, p));
        if (st != KEEL_STATUS_OK) {
            error(w, "publish", st);
            break;
        }
        sent++;
    }
    while (done_ids < sent) {
        st = mqtt_next(w, h, &m);
        if (st != KEEL_STATUS_OK) {
            error(w, "publish result", st);
            break;
        }
        if (m.type == KEEL_MSG_MQTT_PUBLISH_RESULT) {
            done_ids++;
            if (m.u.mqtt_publish_result.state == KEEL_MSG_MQTT_COMPLETED && m.id >= 1 && m.id <= w->total) {
                w->ok++;
            } else {
                logf("freertos-channels: ERROR mqtt publish id=%u state=%u", m.id, m.u.mqtt_publish_result.state);
            }
        }
        (void)keel_chan_consume(h);
    }
    st = send(h, w->msg, keel_msg_mqtt_disconnect(w->msg, sizeof w->msg));
    if (st == KEEL_STATUS_OK) {
        st = mqtt_next(w, h, &m);
    }
    if (st != KEEL_STATUS_OK || m.type != KEEL_MSG_MQTT_DISCONNECT_RESULT) {
        error(w, "disconnect", st);
    }
close:
    st = keel_chan_close(&h);
    if (st != KEEL_STATUS_OK || h != 0) {
        error(w, "close", st);
    }
done:
    xTaskNotifyGive(reporter);
    vTaskSuspend(NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* Reporter, start                                                                          */
/* ---------------------------------------------------------------------------------------- */

static StaticTask_t reporter_tcb;
static StackType_t reporter_stack[STACK_WORDS];

static void reporter_task(void *arg)
{
    (void)arg;
    for (uint32_t done = 0; done < N_WORKERS; done++) {
        (void)ulTaskNotifyTake(pdFALSE, portMAX_DELAY);
    }
    uint32_t http_ok = w_http_a.ok + w_http_b.ok, http_n = w_http_a.total + w_http_b.total;
    int pass = http_ok == http_n && w_config.ok == w_config.total && w_mqtt.ok == w_mqtt.total;
    logf("freertos-channels: %s http=%u/%u config=%u/%u mqtt=%u/%u records=%u overruns=%u", pass ? "PASS" : "FAIL",
         http_ok, http_n, w_config.ok, w_config.total, w_mqtt.ok, w_mqtt.total, records, overruns);
    (void)keel_net_release();
    vTaskSuspend(NULL);
}

static void start(struct worker *w, const char *name, uint32_t tag, uint32_t total, TaskFunction_t fn,
                  UBaseType_t prio)
{
    w->name = name;
    w->tag = tag;
    w->total = total;
    workers[w->tag] = xTaskCreateStatic(fn, w->name, STACK_WORDS, w, prio, w->stack, &w->tcb);
}

int main(void)
{
    (void)keel_device_id((uint8_t *)device, KEEL_DEVICE_ID_LEN);
    logf("freertos-channels: start device=%s url=%s", device, URL);
    keel_status_t st = keel_notify_setup(&ring, sizeof ring, KEEL_NOTIFY_DEFAULT_IRQ);
    if (st != KEEL_STATUS_OK) {
        logf("freertos-channels: FAIL keel_notify_setup status=%s", keel_status_name(st));
        for (;;) {
            __asm volatile("wfi");
        }
    }
    reporter = xTaskCreateStatic(reporter_task, "reporter", STACK_WORDS, NULL, 1, reporter_stack, &reporter_tcb);
    start(&w_http_a, "http-a", 1, HTTP_GETS, http_task, 2);
    start(&w_http_b, "http-b", 2, HTTP_GETS, http_task, 2);
    start(&w_config, "config", 3, CONFIG_FETCHES, config_task, 2);
    start(&w_mqtt, "mqtt", 4, MQTT_PUBLISHES, mqtt_task, 3);
    /* Enabled once the task handles exist: the dispatcher may run from here on. */
    keel_notify_enable_irq(KEEL_NOTIFY_DEFAULT_IRQ);
    st = keel_net_request(NET_TAG);
    if (st != KEEL_STATUS_OK) {
        logf("freertos-channels: FAIL keel_net_request status=%s", keel_status_name(st));
    }
    vTaskStartScheduler();
    for (;;) {
    }
}

void channels_assert_failed(const char *file, int line)
{
    (void)file;
    logf("freertos-channels: FAIL assert line=%u", (unsigned)line);
    __asm volatile("cpsid i");
    for (;;) {
    }
}

void vApplicationStackOverflowHook(TaskHandle_t task, char *name)
{
    (void)task;
    logf("freertos-channels: FAIL stack overflow %s", name);
    __asm volatile("cpsid i");
    for (;;) {
    }
}
