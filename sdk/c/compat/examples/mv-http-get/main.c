/*
 * mv-http-get - Microvisor-compat conformance app: an HTTP GET driven by the notification
 * buffer, written against mv_syscalls.h only.
 *
 * Requests the network, waits for it, opens an HTTP channel, sends GET URL (compiled in:
 * -DURL='"https://..."', default https://localhost:18443/hello), waits for CHANNELDATAREADABLE,
 * reads the response (data, every header by index, the body by offset), checks the API's edge
 * rules (INDEXINVALID past the last header, OFFSETINVALID past the body, a second request
 * answers REQUESTALREADYSENT, no CHANNELDATAWRITESPACE event on an HTTP channel, mvCloseChannel
 * zeroes the handle also when it is already closed), and logs:
 *
 *   mv-http-get: status=<code> result=<result> headers=<n> body-len=<n>
 *   mv-http-get: header[<i>] <Name: value>
 *   mv-http-get: body <up to 200 bytes>
 *   mv-http-get: PASS status=<code> body=<up to 64 bytes> records=<n>
 * or
 *   mv-http-get: FAIL <step> <detail>
 */
#include <stdint.h>

#include "mv_board.h"
#include "mv_syscalls.h"

#ifndef URL
#define URL "https://localhost:18443/hello"
#endif

#define NOTE_IRQ 81u
#define NOTE_RECORDS 8u
#define TAG_NET 1u
#define TAG_HTTP 2u

static volatile struct MvNotification notes[NOTE_RECORDS] __attribute__((aligned(8)));
static volatile uint32_t note_index;
static volatile uint32_t records, readable, closed, writespace, net_events, bad_order;
static uint64_t last_us;

static uint8_t rx[2560] __attribute__((aligned(512)));
static uint8_t tx[512] __attribute__((aligned(512)));
static uint8_t body[256];

/* One record per interrupt, in ring order, as on Microvisor. */
void IRQ81_Handler(void)
{
    volatile struct MvNotification *n = &notes[note_index];
    records++;
    if (n->microseconds < last_us) {
        bad_order++;
    }
    last_us = n->microseconds;
    switch (n->event_type) {
    case MV_EVENTTYPE_NETWORKSTATUSCHANGED:
        net_events++;
        break;
    case MV_EVENTTYPE_CHANNELDATAREADABLE:
        if (n->tag == TAG_HTTP) {
            readable++;
        }
        break;
    case MV_EVENTTYPE_CHANNELDATAWRITESPACE:
        writespace++;
        break;
    case MV_EVENTTYPE_CHANNELNOTCONNECTED:
        closed++;
        break;
    default:
        break;
    }
    n->event_type = MV_EVENTTYPE_NOEVENT;
    note_index = (note_index + 1u) % NOTE_RECORDS;
}

static void fail(const char *step, enum MvStatus st)
{
    board_log("mv-http-get: FAIL %s status=%s", step, mvStatusName(st));
    board_idle();
}

int main(void)
{
    board_init();
    board_log("mv-http-get: start url=%s", URL);

    MvNotificationHandle nh = 0;
    MvNetworkHandle net = 0;
    struct MvNotificationSetup ns = {.irq = NOTE_IRQ, .buffer = (struct MvNotification *)notes,
                                     .buffer_size = sizeof notes};
    enum MvStatus st;
    const char *step = board_connect(&ns, TAG_NET, 60000, &nh, &net, &st);
    if (step != NULL) {
        fail(step, st);
    }

    MvChannelHandle ch = 0;
    struct MvOpenChannelParams cp = {
        .version = 1,
        .v1 = {.notification_handle = nh, .notification_tag = TAG_HTTP, .network_handle = net,
               .receive_buffer = rx, .receive_buffer_len = sizeof rx, .send_buffer = tx,
               .send_buffer_len = sizeof tx, .channel_type = MV_CHANNELTYPE_HTTP,
               .endpoint = {(const uint8_t *)"", 0}}};
    st = mvOpenChannel(&cp, &ch);
    if (st != MV_STATUS_OKAY || ch == 0) {
        fail("mvOpenChannel", st);
    }

    static const char accept[] = "Accept: */*";
    struct MvHttpHeader hdr = {sizeof accept - 1u, (const uint8_t *)accept};
    struct MvHttpRequest req = {.method = {(const uint8_t *)"GET", 3},
                                .url = board_str(URL),
                                .num_headers = 1,
                                .headers = &hdr,
                                .body = {(const uint8_t *)"", 0},
                                .timeout_ms = 10000};
    st = mvSendHttpRequest(ch, &req);
    if (st != MV_STATUS_OKAY) {
        fail("mvSendHttpRequest", st);
    }
    st = mvSendHttpRequest(ch, &req);
    if (st != MV_STATUS_REQUESTALREADYSENT) {
        fail("second request", st);
    }

    if (!board_wait_flag(&readable, &closed, 30000)) {
        fail("waiting for the response", closed ? MV_STATUS_CHANNELCLOSED : MV_STATUS_RESPONSENOTPRESENT);
    }

    struct MvHttpResponseData rd;
    st = mvReadHttpResponseData(ch, &rd);
    if (st != MV_STATUS_OKAY) {
        fail("mvReadHttpResponseData", st);
    }
    board_log("mv-http-get: status=%u result=%u headers=%u body-len=%u", (unsigned)rd.status_code,
              (unsigned)rd.result, (unsigned)rd.num_headers, (unsigned)rd.body_length);
    if (rd.result != MV_HTTPRESULT_OK) {
        board_log("mv-http-get: FAIL result=%u", (unsigned)rd.result);
        board_idle();
    }
    for (uint32_t i = 0; i < rd.num_headers; i++) {
        uint8_t h[200];
        for (uint32_t k = 0; k < sizeof h; k++) {
            h[k] = 0xFF; /* the terminator trick of Microvisor apps: stop at a non-ASCII byte */
        }
        st = mvReadHttpResponseHeader(ch, i, h, sizeof h);
        uint32_t n = 0;
        while (n < sizeof h && h[n] != 0 && h[n] != 0xFF) {
            n++;
        }
        if (st == MV_STATUS_OKAY) {
            board_log("mv-http-get: header[%u] %.*s", (unsigned)i, (int)n, (const char *)h);
        } else if (st != MV_STATUS_INVALIDBUFFERSIZE) {
            fail("mvReadHttpResponseHeader", st);
        }
    }
    st = mvReadHttpResponseHeader(ch, rd.num_headers, body, sizeof body);
    if (st != MV_STATUS_INDEXINVALID) {
        fail("header past the last", st);
    }
    uint32_t n = rd.body_length < sizeof body ? rd.body_length : sizeof body;
    st = mvReadHttpResponseBody(ch, 0, body, n);
    if (st != MV_STATUS_OKAY) {
        fail("mvReadHttpResponseBody", st);
    }
    st = mvReadHttpResponseBody(ch, rd.body_length + 1u, body, 1);
    if (st != MV_STATUS_OFFSETINVALID) {
        fail("body past the end", st);
    }
    board_log("mv-http-get: body %.*s", (int)(n < 200u ? n : 200u), (const char *)body);

    st = mvCloseChannel(&ch);
    if (st != MV_STATUS_OKAY || ch != 0) {
        fail("mvCloseChannel", st);
    }
    ch = 0x12345678u; /* a handle that was never valid */
    st = mvCloseChannel(&ch);
    if (st != MV_STATUS_INVALIDHANDLE || ch != 0) {
        fail("mvCloseChannel of a closed channel", st);
    }
    if (writespace != 0 || bad_order != 0) {
        board_log("mv-http-get: FAIL events writespace=%u out-of-order=%u", (unsigned)writespace,
                  (unsigned)bad_order);
        board_idle();
    }
    st = mvReleaseNetwork(&net);
    if (st != MV_STATUS_OKAY || net != 0) {
        fail("mvReleaseNetwork", st);
    }
    board_log("mv-http-get: PASS status=%u body=%.*s records=%u", (unsigned)rd.status_code,
              (int)(n < 64u ? n : 64u), (const char *)body, (unsigned)records);
    board_idle();
}
