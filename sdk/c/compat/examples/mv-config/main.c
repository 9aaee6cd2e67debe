/*
 * mv-config - Microvisor-compat conformance app: fetches a configuration value, a secret and a
 * key that does not exist on one CONFIGFETCH channel, written against mv_syscalls.h only.
 *
 * Keys (compiled in, overridable with -D): CONFIG_KEY "greeting" (account scope, config store),
 * SECRET_KEY "api-key" (account scope, secret store), MISSING_KEY "mv-config-missing" (device
 * scope, config store; must not exist). Logs:
 *
 *   mv-config: PASS <CONFIG_KEY>=<value> secret-len=<n> missing=KEYNOTFOUND
 * or
 *   mv-config: FAIL <step> <detail>
 * The secret's value is never logged.
 */
#include <stdint.h>

#include "mv_board.h"
#include "mv_syscalls.h"

#ifndef CONFIG_KEY
#define CONFIG_KEY "greeting"
#endif
#ifndef SECRET_KEY
#define SECRET_KEY "api-key"
#endif
#ifndef MISSING_KEY
#define MISSING_KEY "mv-config-missing"
#endif

#define NOTE_IRQ 82u
#define NOTE_RECORDS 4u
#define TAG_NET 1u
#define TAG_CONFIG 3u

static volatile struct MvNotification notes[NOTE_RECORDS] __attribute__((aligned(8)));
static volatile uint32_t note_index, readable, closed, writespace;

static uint8_t rx[4096] __attribute__((aligned(512)));
static uint8_t tx[512] __attribute__((aligned(512)));

void IRQ82_Handler(void)
{
    volatile struct MvNotification *n = &notes[note_index];
    if (n->event_type == MV_EVENTTYPE_CHANNELDATAREADABLE && n->tag == TAG_CONFIG) {
        readable++;
    } else if (n->event_type == MV_EVENTTYPE_CHANNELNOTCONNECTED) {
        closed++;
    } else if (n->event_type == MV_EVENTTYPE_CHANNELDATAWRITESPACE) {
        writespace++;
    }
    n->event_type = MV_EVENTTYPE_NOEVENT;
    note_index = (note_index + 1u) % NOTE_RECORDS;
}

static void fail(const char *step, enum MvStatus st)
{
    board_log("mv-config: FAIL %s status=%s", step, mvStatusName(st));
    board_idle();
}

static const char *item_result(enum MvConfigKeyFetchResult r)
{
    switch (r) {
    case MV_CONFIGKEYFETCHRESULT_OK: return "OK";
    case MV_CONFIGKEYFETCHRESULT_KEYNOTFOUND: return "KEYNOTFOUND";
    case MV_CONFIGKEYFETCHRESULT_SERVERERROR: return "SERVERERROR";
    default: return "INVALIDKEY";
    }
}

int main(void)
{
    board_init();
    board_log("mv-config: start key=%s secret=%s", CONFIG_KEY, SECRET_KEY);

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
        .v1 = {.notification_handle = nh, .notification_tag = TAG_CONFIG, .network_handle = net,
               .receive_buffer = rx, .receive_buffer_len = sizeof rx, .send_buffer = tx,
               .send_buffer_len = sizeof tx, .channel_type = MV_CHANNELTYPE_CONFIGFETCH,
               .endpoint = {(const uint8_t *)"", 0}}};
    st = mvOpenChannel(&cp, &ch);
    if (st != MV_STATUS_OKAY) {
        fail("mvOpenChannel", st);
    }
    struct MvConfigKeyToFetch keys[3] = {
        {MV_CONFIGKEYFETCHSCOPE_ACCOUNT, MV_CONFIGKEYFETCHSTORE_CONFIG, board_str(CONFIG_KEY)},
        {MV_CONFIGKEYFETCHSCOPE_ACCOUNT, MV_CONFIGKEYFETCHSTORE_SECRET, board_str(SECRET_KEY)},
        {MV_CONFIGKEYFETCHSCOPE_DEVICE, MV_CONFIGKEYFETCHSTORE_CONFIG, board_str(MISSING_KEY)},
    };
    struct MvConfigKeyFetchParams req = {.num_items = 3, .keys_to_fetch = keys};
    st = mvSendConfigFetchRequest(ch, &req);
    if (st != MV_STATUS_OKAY) {
        fail("mvSendConfigFetchRequest", st);
    }
    if (mvSendConfigFetchRequest(ch, &req) != MV_STATUS_REQUESTALREADYSENT) {
        fail("second request", MV_STATUS_OKAY);
    }
    if (!board_wait_flag(&readable, &closed, 30000)) {
        fail("waiting for the values", closed ? MV_STATUS_CHANNELCLOSED : MV_STATUS_RESPONSENOTPRESENT);
    }
    struct MvConfigResponseData rd;
    st = mvReadConfigFetchResponseData(ch, &rd);
    if (st != MV_STATUS_OKAY) {
        fail("mvReadConfigFetchResponseData", st);
    }
    if (rd.result != MV_CONFIGFETCHRESULT_OK || rd.num_items != 3) {
        board_log("mv-config: FAIL result=%u items=%u", (unsigned)rd.result, (unsigned)rd.num_items);
        board_idle();
    }
    static uint8_t value[512], secret[512];
    uint32_t value_len = 0, secret_len = 0, missing_len = 0;
    enum MvConfigKeyFetchResult r0, r1, r2;
    struct MvConfigResponseReadItemParams item = {.item_index = 0, .result = &r0,
                                                  .buf = {value, sizeof value, &value_len}};
    st = mvReadConfigResponseItem(ch, &item);
    if (st != MV_STATUS_OKAY || r0 != MV_CONFIGKEYFETCHRESULT_OK) {
        board_log("mv-config: FAIL item %s status=%s result=%s", CONFIG_KEY, mvStatusName(st), item_result(r0));
        board_idle();
    }
    item = (struct MvConfigResponseReadItemParams){.item_index = 1, .result = &r1,
                                                   .buf = {secret, sizeof secret, &secret_len}};
    st = mvReadConfigResponseItem(ch, &item);
    if (st != MV_STATUS_OKAY || r1 != MV_CONFIGKEYFETCHRESULT_OK) {
        board_log("mv-config: FAIL item %s status=%s result=%s", SECRET_KEY, mvStatusName(st), item_result(r1));
        board_idle();
    }
    item = (struct MvConfigResponseReadItemParams){.item_index = 2, .result = &r2,
                                                   .buf = {secret + secret_len, 0, &missing_len}};
    st = mvReadConfigResponseItem(ch, &item);
    if (st != MV_STATUS_OKAY || r2 != MV_CONFIGKEYFETCHRESULT_KEYNOTFOUND) {
        board_log("mv-config: FAIL item %s status=%s result=%s", MISSING_KEY, mvStatusName(st), item_result(r2));
        board_idle();
    }
    item.item_index = 3;
    if (mvReadConfigResponseItem(ch, &item) != MV_STATUS_INDEXINVALID) {
        fail("item past the last", MV_STATUS_OKAY);
    }
    st = mvCloseChannel(&ch);
    if (st != MV_STATUS_OKAY || ch != 0 || writespace != 0) {
        fail("mvCloseChannel", st);
    }
    (void)mvReleaseNetwork(&net);
    board_log("mv-config: PASS %s=%.*s secret-len=%u missing=%s", CONFIG_KEY, (int)value_len, (const char *)value,
              (unsigned)secret_len, item_result(r2));
    board_idle();
}
