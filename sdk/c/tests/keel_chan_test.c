/*
 * Host-side check of keel_chan.h against the Rust codec (crates/keel-channel/tests/c_codec.rs
 * builds and runs this with the host's C compiler).
 *
 *   keel_chan_test enc   prints `label hex` for a fixed set of encoded requests (the Rust test
 *                        encodes the same messages with Msg::encode and compares), and
 *                        `label err=N` for requests the encoder must refuse.
 *   keel_chan_test dec   reads `label hex` lines, decodes each message and prints
 *                        `label <description>` or `label err=N`; with `label` starting with
 *                        `T` it also prints how many truncations and whether one trailing byte
 *                        were (wrongly) accepted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel_chan.h"

static void hex(const uint8_t *b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        printf("%02x", b[i]);
    }
}

static void hexs(keel_msg_str_t s)
{
    hex(s.data, s.len);
}

/* Prints the message or the error, then checks nothing is written past `cap`. */
static void out(const char *label, uint8_t *buf, uint32_t cap, int32_t n)
{
    printf("%s ", label);
    if (n < 0) {
        printf("err=%d", (int)n);
    } else {
        hex(buf, (uint32_t)n);
    }
    printf("\n");
    if (buf[cap] != 0xA5) {
        printf("%s OVERFLOW\n", label);
    }
}

static uint8_t big[70000];

static int enc(void)
{
    static uint8_t buf[4096 + 1];
    const uint32_t cap = 4096;
    memset(buf, 0xA5, sizeof buf);
    keel_msg_str_t headers[2] = {KEEL_MSG_STR("Accept: text/plain"), KEEL_MSG_STR("X-Keel: 1")};
    out("http_get", buf, cap,
        keel_msg_http_request(buf, cap, KEEL_MSG_STR("GET"), KEEL_MSG_STR("https://example.com/x?y=1"),
                              5000, headers, 2, KEEL_MSG_STR("")));
    uint8_t body[256];
    for (int i = 0; i < 256; i++) {
        body[i] = (uint8_t)i;
    }
    keel_msg_str_t b = {body, sizeof body};
    out("http_post", buf, cap,
        keel_msg_http_request(buf, cap, KEEL_MSG_STR("POST"), keel_msg_cstr("https://10.0.2.2:8443/echo"),
                              60000, NULL, 0, b));
    keel_msg_key_t keys[2] = {{0, 1, KEEL_MSG_STR("greeting")}, {1, 0, KEEL_MSG_STR("api/key")}};
    out("config", buf, cap, keel_msg_config_fetch(buf, cap, keys, 2));
    keel_msg_will_t will = {KEEL_MSG_STR("dev/gone"), KEEL_MSG_STR("bye"), 1, 1};
    out("connect_will", buf, cap, keel_msg_mqtt_connect(buf, cap, 1, 60, &will));
    out("connect", buf, cap, keel_msg_mqtt_connect(buf, cap, 0, 0, NULL));
    keel_msg_sub_t subs[2] = {{KEEL_MSG_STR("cmd/#"), 1}, {KEEL_MSG_STR("x"), 0}};
    out("subscribe", buf, cap, keel_msg_mqtt_subscribe(buf, cap, 7, subs, 2));
    keel_msg_str_t topics[1] = {KEEL_MSG_STR("cmd/#")};
    out("unsubscribe", buf, cap, keel_msg_mqtt_unsubscribe(buf, cap, 8, topics, 1));
    static const uint8_t zeros[300];
    keel_msg_str_t z = {zeros, sizeof zeros};
    out("publish", buf, cap, keel_msg_mqtt_publish(buf, cap, 9, 1, 0, KEEL_MSG_STR("t"), z));
    out("publish_retain", buf, cap,
        keel_msg_mqtt_publish(buf, cap, 0xFFFFFFFFu, 0, 1, KEEL_MSG_STR("sensor/kd00"),
                              KEEL_MSG_STR("{\"t\":21}")));
    out("ack", buf, cap, keel_msg_mqtt_ack(buf, cap, 3));
    out("disconnect", buf, cap, keel_msg_mqtt_disconnect(buf, cap));
    /* Refused. */
    keel_msg_str_t many[33];
    for (int i = 0; i < 33; i++) {
        many[i] = KEEL_MSG_STR("A: b");
    }
    out("too_many_headers", buf, cap,
        keel_msg_http_request(buf, cap, KEEL_MSG_STR("GET"), KEEL_MSG_STR("https://a/"), 5000, many, 33,
                              KEEL_MSG_STR("")));
    keel_msg_key_t many_keys[17];
    for (int i = 0; i < 17; i++) {
        many_keys[i] = keys[0];
    }
    out("too_many_keys", buf, cap, keel_msg_config_fetch(buf, cap, many_keys, 17));
    keel_msg_sub_t many_subs[9];
    for (int i = 0; i < 9; i++) {
        many_subs[i] = subs[0];
    }
    out("too_many_topics", buf, cap, keel_msg_mqtt_subscribe(buf, cap, 1, many_subs, 9));
    keel_msg_str_t long_topic = {big, 65536};
    out("long_topic", buf, cap, keel_msg_mqtt_publish(buf, cap, 1, 0, 0, long_topic, KEEL_MSG_STR("")));
    /* Too small: every shorter buffer is refused and nothing is written past it. */
    int32_t n = keel_msg_http_request(buf, cap, KEEL_MSG_STR("GET"), KEEL_MSG_STR("https://example.com/"),
                                      5000, headers, 2, KEEL_MSG_STR("body"));
    int bad = 0;
    for (int32_t c = 0; c < n; c++) {
        memset(buf, 0xA5, sizeof buf);
        if (keel_msg_http_request(buf, (uint32_t)c, KEEL_MSG_STR("GET"), KEEL_MSG_STR("https://example.com/"),
                                  5000, headers, 2, KEEL_MSG_STR("body")) != KEEL_MSG_ERR_BUFFER_TOO_SMALL ||
            buf[c] != 0xA5) {
            bad++;
        }
    }
    printf("too_small bad=%d\n", bad);
    return 0;
}

static void describe(const keel_msg_t *m)
{
    switch (m->type) {
    case KEEL_MSG_HTTP_RESPONSE:
        printf("http_response result=%u status=%u headers=[", m->u.http_response.result,
               m->u.http_response.status);
        for (uint32_t i = 0; i < m->count; i++) {
            keel_msg_str_t h;
            if (keel_msg_http_header(m, i, &h) != 0) {
                printf("BAD");
            }
            printf(i ? "," : "");
            hexs(h);
        }
        printf("] body=");
        hexs(m->u.http_response.body);
        break;
    case KEEL_MSG_CONFIG_RESULT:
        printf("config_result result=%u items=[", m->u.config_result.result);
        for (uint32_t i = 0; i < m->count; i++) {
            uint8_t r;
            keel_msg_str_t v;
            if (keel_msg_config_item(m, i, &r, &v) != 0) {
                printf("BAD");
            }
            printf(i ? ",%u:" : "%u:", r);
            hexs(v);
        }
        printf("]");
        break;
    case KEEL_MSG_MQTT_CONNECT_RESULT:
        printf("mqtt_connect_result state=%u reason=%u session_present=%u", m->u.mqtt_connect_result.state,
               (unsigned)m->u.mqtt_connect_result.reason, m->u.mqtt_connect_result.session_present);
        break;
    case KEEL_MSG_MQTT_SUBSCRIBE_RESULT:
        printf("mqtt_subscribe_result id=%u state=%u codes=", (unsigned)m->id, m->u.mqtt_subscribe_result.state);
        hexs(m->u.mqtt_subscribe_result.codes);
        break;
    case KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT:
        printf("mqtt_unsubscribe_result id=%u state=%u", (unsigned)m->id, m->u.mqtt_unsubscribe_result.state);
        break;
    case KEEL_MSG_MQTT_PUBLISH_RESULT:
        printf("mqtt_publish_result id=%u state=%u reason=%u", (unsigned)m->id, m->u.mqtt_publish_result.state,
               (unsigned)m->u.mqtt_publish_result.reason);
        break;
    case KEEL_MSG_MQTT_MESSAGE:
        printf("mqtt_message id=%u qos=%u retain=%u topic=", (unsigned)m->id, m->u.mqtt_message.qos,
               m->u.mqtt_message.retain);
        hexs(m->u.mqtt_message.topic);
        printf(" payload=");
        hexs(m->u.mqtt_message.payload);
        break;
    case KEEL_MSG_MQTT_LOST:
        printf("mqtt_lost reason=%u topic=", m->u.mqtt_lost.reason);
        hexs(m->u.mqtt_lost.topic);
        printf(" len=%u", (unsigned)m->u.mqtt_lost.len);
        break;
    case KEEL_MSG_MQTT_DISCONNECT_RESULT:
        printf("mqtt_disconnect_result state=%u code=%u", m->u.mqtt_disconnect_result.state,
               (unsigned)m->u.mqtt_disconnect_result.code);
        break;
    case KEEL_MSG_MQTT_STATUS:
        printf("mqtt_status state=%u reason=", m->u.mqtt_status.state);
        hexs(m->u.mqtt_status.reason);
        break;
    case KEEL_MSG_ERROR:
        printf("error code=%u text=", m->u.error.code);
        hexs(m->u.error.text);
        break;
    default:
        printf("UNEXPECTED type=%u", m->type);
    }
}

static int unhex(const char *s, uint8_t *out, uint32_t max, uint32_t *n)
{
    size_t l = strlen(s);
    if (l % 2 != 0 || l / 2 > max) {
        return -1;
    }
    for (size_t i = 0; i < l / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    *n = (uint32_t)(l / 2);
    return 0;
}

static char line[300000];

static int dec(void)
{
    while (fgets(line, sizeof line, stdin) != NULL) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) {
            *nl = '\0';
        }
        char *sp = strchr(line, ' ');
        const char *hx = sp != NULL ? sp + 1 : "";
        if (sp != NULL) {
            *sp = '\0';
        }
        uint32_t n;
        if (unhex(hx, big, sizeof big - 1, &n) != 0) {
            printf("%s BADINPUT\n", line);
            continue;
        }
        /* Decode from an exact-size heap copy so that a read past the end is caught by ASan. */
        uint8_t *copy = malloc(n + 1);
        memcpy(copy, big, n);
        keel_msg_t m;
        int r = keel_msg_decode(copy, n, &m);
        printf("%s ", line);
        if (r != 0) {
            printf("err=%d", r);
        } else {
            describe(&m);
        }
        if (line[0] == 'T') {
            int trunc_ok = 0;
            for (uint32_t cut = 0; cut < n; cut++) {
                uint8_t *t = malloc(cut + 1);
                memcpy(t, copy, cut);
                trunc_ok += keel_msg_decode(t, cut, NULL) == 0;
                free(t);
            }
            copy[n] = 0;
            printf(" trunc_ok=%d trail_ok=%d", trunc_ok, keel_msg_decode(copy, n + 1, NULL) == 0);
        }
        printf("\n");
        free(copy);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "enc") == 0) {
        return enc();
    }
    if (argc == 2 && strcmp(argv[1], "dec") == 0) {
        return dec();
    }
    fprintf(stderr, "usage: keel_chan_test enc|dec\n");
    return 2;
}
