/*
 * mv-mqtt - Microvisor-compat conformance app: managed MQTT, written against mv_syscalls.h only.
 *
 * Opens an MQTT channel with an empty endpoint (Keel: the server's broker profile "default";
 * -DPROFILE='"name"' to choose one), connects (clean start, keepalive 60 s), subscribes to
 * command/<device-id> (QoS 1), publishes {"hello":1} to sensor/<device-id> (QoS 1), then waits
 * up to WAIT_S (default 120) seconds for one command, acknowledges it, publishes it back to
 * sensor/<device-id>/ack, disconnects and closes. Every CHANNELDATAREADABLE record is
 * demultiplexed with mvMqttGetNextReadableDataType(), as Microvisor apps do. Logs:
 *
 *   mv-mqtt: connected session-present=<0|1>
 *   mv-mqtt: READY subscribed=command/<id> published=sensor/<id>   (a test now publishes a command)
 *   mv-mqtt: command topic=<topic> payload=<payload> qos=<q>
 *   mv-mqtt: PASS command=<payload> published=2
 * or
 *   mv-mqtt: FAIL <step> <detail>
 */
#include <stdint.h>

#include "mv_board.h"
#include "mv_syscalls.h"

#ifndef PROFILE
#define PROFILE ""
#endif
#ifndef WAIT_S
#define WAIT_S 120u
#endif

#define NOTE_IRQ 83u
#define NOTE_RECORDS 16u
#define TAG_NET 1u
#define TAG_MQTT 4u

static volatile struct MvNotification notes[NOTE_RECORDS] __attribute__((aligned(8)));
static volatile uint32_t note_index, readable, closed;

static uint8_t rx[4096] __attribute__((aligned(512)));
static uint8_t tx[4096] __attribute__((aligned(512)));

static MvChannelHandle ch;
static char device[35];
static char cmd_topic[64], sensor_topic[64], ack_topic[64];
static uint8_t topic_buf[128], payload_buf[256];
static uint32_t topic_len, payload_len, published;

void IRQ83_Handler(void)
{
    volatile struct MvNotification *n = &notes[note_index];
    if (n->event_type == MV_EVENTTYPE_CHANNELDATAREADABLE && n->tag == TAG_MQTT) {
        readable++;
    } else if (n->event_type == MV_EVENTTYPE_CHANNELNOTCONNECTED && n->tag == TAG_MQTT) {
        closed++;
    }
    n->event_type = MV_EVENTTYPE_NOEVENT;
    note_index = (note_index + 1u) % NOTE_RECORDS;
}

static void fail(const char *step, enum MvStatus st)
{
    enum MvClosureReason why = MV_CLOSUREREASON_NONE;
    if (ch != 0) {
        (void)mvGetChannelClosureReason(ch, &why);
    }
    board_log("mv-mqtt: FAIL %s status=%s closure=%u", step, mvStatusName(st), (unsigned)why);
    board_idle();
}

static uint32_t cat(char *dst, uint32_t cap, const char *a, const char *b)
{
    uint32_t n = 0;
    for (const char *s = a; *s != '\0' && n + 1 < cap; s++) {
        dst[n++] = *s;
    }
    for (const char *s = b; *s != '\0' && n + 1 < cap; s++) {
        dst[n++] = *s;
    }
    dst[n] = '\0';
    return n;
}

/* Waits for the next readable item of the channel and returns its type (NONE on timeout). */
static enum MvMqttReadableDataType next(uint32_t timeout_ms)
{
    uint32_t start = board_ms();
    for (;;) {
        enum MvMqttReadableDataType t = MV_MQTTREADABLEDATATYPE_NONE;
        enum MvStatus st = mvMqttGetNextReadableDataType(ch, &t);
        if (st != MV_STATUS_OKAY) {
            fail("mvMqttGetNextReadableDataType", st);
        }
        if (t != MV_MQTTREADABLEDATATYPE_NONE) {
            return t;
        }
        if (closed != 0) {
            fail("channel closed", MV_STATUS_CHANNELCLOSED);
        }
        if (board_ms() - start >= timeout_ms) {
            return MV_MQTTREADABLEDATATYPE_NONE;
        }
        board_sleep();
    }
}

/* Waits for the response of type `want`, handling messages that arrive meanwhile. */
static void expect(enum MvMqttReadableDataType want, const char *what)
{
    for (;;) {
        enum MvMqttReadableDataType t = next(30000);
        if (t == want) {
            return;
        }
        if (t == MV_MQTTREADABLEDATATYPE_NONE) {
            board_log("mv-mqtt: FAIL no %s", what);
            board_idle();
        }
        if (t == MV_MQTTREADABLEDATATYPE_MESSAGERECEIVED) {
            return; /* the caller of a command wait handles it */
        }
        board_log("mv-mqtt: FAIL unexpected %u while waiting for %s", (unsigned)t, what);
        board_idle();
    }
}

static void publish(const char *topic, const uint8_t *payload, uint32_t len, uint32_t id)
{
    struct MvMqttPublishRequest pub = {.correlation_id = id, .topic = board_str(topic),
                                       .payload = {payload, len}, .desired_qos = 1, .retain = 0};
    enum MvStatus st = mvMqttRequestPublish(ch, &pub);
    if (st != MV_STATUS_OKAY) {
        fail("mvMqttRequestPublish", st);
    }
    expect(MV_MQTTREADABLEDATATYPE_PUBLISHRESPONSE, "publish response");
    struct MvMqttPublishResponse pr;
    st = mvMqttReadPublishResponse(ch, &pr);
    if (st != MV_STATUS_OKAY || pr.request_state != MV_MQTTREQUESTSTATE_REQUESTCOMPLETED || pr.correlation_id != id) {
        board_log("mv-mqtt: FAIL publish status=%s state=%u id=%u", mvStatusName(st), (unsigned)pr.request_state,
                  (unsigned)pr.correlation_id);
        board_idle();
    }
    published++;
}

int main(void)
{
    board_init();
    enum MvStatus st = mvGetDeviceId((uint8_t *)device, 34);
    if (st != MV_STATUS_OKAY) {
        fail("mvGetDeviceId", st);
    }
    device[34] = '\0';
    cat(cmd_topic, sizeof cmd_topic, "command/", device);
    cat(sensor_topic, sizeof sensor_topic, "sensor/", device);
    cat(ack_topic, sizeof ack_topic, sensor_topic, "/ack");
    board_log("mv-mqtt: start device=%s profile=%s", device, PROFILE[0] ? PROFILE : "(default)");

    MvNotificationHandle nh = 0;
    MvNetworkHandle net = 0;
    struct MvNotificationSetup ns = {.irq = NOTE_IRQ, .buffer = (struct MvNotification *)notes,
                                     .buffer_size = sizeof notes};
    const char *step = board_connect(&ns, TAG_NET, 60000, &nh, &net, &st);
    if (step != NULL) {
        fail(step, st);
    }
    struct MvOpenChannelParams cp = {
        .version = 1,
        .v1 = {.notification_handle = nh, .notification_tag = TAG_MQTT, .network_handle = net,
               .receive_buffer = rx, .receive_buffer_len = sizeof rx, .send_buffer = tx,
               .send_buffer_len = sizeof tx, .channel_type = MV_CHANNELTYPE_MQTT, .endpoint = board_str(PROFILE)}};
    st = mvOpenChannel(&cp, &ch);
    if (st != MV_STATUS_OKAY) {
        fail("mvOpenChannel", st);
    }

    /* Broker, client id, credentials and TLS are the server profile's on Keel: these are the
     * values a Microvisor app passes, accepted and ignored. */
    struct MvMqttConnectRequest conn = {.protocol_version = MV_MQTTPROTOCOLVERSION_V5,
                                        .host = board_str("broker.example.com"),
                                        .port = 8883,
                                        .clientid = board_str(device),
                                        .authentication = {.method = MV_MQTTAUTHENTICATIONMETHOD_NONE},
                                        .tls_credentials = NULL,
                                        .keepalive = 60,
                                        .clean_start = 1,
                                        .will = NULL};
    st = mvMqttRequestConnect(ch, &conn);
    if (st != MV_STATUS_OKAY) {
        fail("mvMqttRequestConnect", st);
    }
    expect(MV_MQTTREADABLEDATATYPE_CONNECTRESPONSE, "connect response");
    struct MvMqttConnectResponse cr;
    st = mvMqttReadConnectResponse(ch, &cr);
    if (st != MV_STATUS_OKAY || cr.request_state != MV_MQTTREQUESTSTATE_REQUESTCOMPLETED) {
        board_log("mv-mqtt: FAIL connect status=%s state=%u reason=%u", mvStatusName(st), (unsigned)cr.request_state,
                  (unsigned)cr.reason_code);
        board_idle();
    }
    board_log("mv-mqtt: connected reason=%u", (unsigned)cr.reason_code);

    struct MvMqttSubscription sub = {.topic = board_str(cmd_topic), .desired_qos = 1};
    struct MvMqttSubscribeRequest sr = {.correlation_id = 1, .subscriptions = &sub, .num_subscriptions = 1};
    st = mvMqttRequestSubscribe(ch, &sr);
    if (st != MV_STATUS_OKAY) {
        fail("mvMqttRequestSubscribe", st);
    }
    expect(MV_MQTTREADABLEDATATYPE_SUBSCRIBERESPONSE, "subscribe response");
    enum MvMqttRequestState sstate = MV_MQTTREQUESTSTATE_INVALIDPARAMETERS;
    uint32_t sid = 0, codes[1] = {0xFF}, ncodes = 0;
    struct MvMqttSubscribeResponse sresp = {&sstate, &sid, codes, 1, &ncodes};
    st = mvMqttReadSubscribeResponse(ch, &sresp);
    if (st != MV_STATUS_OKAY || sstate != MV_MQTTREQUESTSTATE_REQUESTCOMPLETED || sid != 1 || ncodes != 1 ||
        codes[0] > 2) {
        board_log("mv-mqtt: FAIL subscribe status=%s state=%u id=%u codes=%u/%u", mvStatusName(st), (unsigned)sstate,
                  (unsigned)sid, (unsigned)ncodes, (unsigned)codes[0]);
        board_idle();
    }
    static const char hello[] = "{\"hello\":1}";
    publish(sensor_topic, (const uint8_t *)hello, sizeof hello - 1u, 2);
    board_log("mv-mqtt: READY subscribed=%s published=%s", cmd_topic, sensor_topic);

    /* Wait for one command. */
    uint32_t start = board_ms();
    enum MvMqttReadableDataType t = MV_MQTTREADABLEDATATYPE_NONE;
    while (t != MV_MQTTREADABLEDATATYPE_MESSAGERECEIVED) {
        uint32_t waited = board_ms() - start;
        if (waited >= WAIT_S * 1000u) {
            board_log("mv-mqtt: FAIL no command within %u s", (unsigned)WAIT_S);
            board_idle();
        }
        t = next(WAIT_S * 1000u - waited);
        if (t == MV_MQTTREADABLEDATATYPE_MESSAGELOST) {
            uint32_t lost_len = 0;
            enum MvMqttLostMessageReason why;
            struct MvMqttLostMessageInfo li = {&why, {topic_buf, sizeof topic_buf, &topic_len}, &lost_len};
            (void)mvMqttReceiveLostMessageInfo(ch, &li);
            board_log("mv-mqtt: lost message reason=%u len=%u", (unsigned)why, (unsigned)lost_len);
        } else if (t != MV_MQTTREADABLEDATATYPE_MESSAGERECEIVED && t != MV_MQTTREADABLEDATATYPE_NONE) {
            board_log("mv-mqtt: FAIL unexpected %u while waiting for a command", (unsigned)t);
            board_idle();
        }
    }
    uint32_t mid = 0, qos = 0;
    uint8_t retain = 0;
    struct MvMqttMessage msg = {&mid, {topic_buf, sizeof topic_buf, &topic_len},
                                {payload_buf, sizeof payload_buf, &payload_len}, &qos, &retain};
    st = mvMqttReceiveMessage(ch, &msg);
    if (st != MV_STATUS_OKAY) {
        fail("mvMqttReceiveMessage", st);
    }
    board_log("mv-mqtt: command topic=%.*s payload=%.*s qos=%u", (int)topic_len, (const char *)topic_buf,
              (int)payload_len, (const char *)payload_buf, (unsigned)qos);
    if (qos > 0) {
        st = mvMqttAcknowledgeMessage(ch, mid);
        if (st != MV_STATUS_OKAY) {
            fail("mvMqttAcknowledgeMessage", st);
        }
    }
    publish(ack_topic, payload_buf, payload_len, 3);

    st = mvMqttRequestDisconnect(ch);
    if (st != MV_STATUS_OKAY) {
        fail("mvMqttRequestDisconnect", st);
    }
    expect(MV_MQTTREADABLEDATATYPE_DISCONNECTRESPONSE, "disconnect response");
    struct MvMqttDisconnectResponse dr;
    st = mvMqttReadDisconnectResponse(ch, &dr);
    if (st != MV_STATUS_OKAY || dr.request_state != MV_MQTTREQUESTSTATE_REQUESTCOMPLETED) {
        board_log("mv-mqtt: FAIL disconnect status=%s state=%u", mvStatusName(st), (unsigned)dr.request_state);
        board_idle();
    }
    st = mvCloseChannel(&ch);
    if (st != MV_STATUS_OKAY || ch != 0) {
        fail("mvCloseChannel", st);
    }
    (void)mvReleaseNetwork(&net);
    board_log("mv-mqtt: PASS command=%.*s published=%u", (int)payload_len, (const char *)payload_buf,
              (unsigned)published);
    board_idle();
}
