/*
 * keel_chan.h - the messages a Keel channel carries, for C apps: an allocation-free encoder for
 * the requests an app sends (HTTP request, config fetch, MQTT connect/subscribe/unsubscribe/
 * publish/ack/disconnect) and a decoder for the answers it receives (HTTP response, config
 * result, MQTT results and messages, errors).
 *
 * It mirrors crates/keel-channel/src/msg.rs (the source of truth; the test
 * crates/keel-channel/tests/c_codec.rs compiles this header with the host's C compiler and
 * checks encodings and decodings byte for byte against the Rust codec). The channel calls
 * themselves (keel_chan_open(), keel_chan_send(), keel_chan_recv(), ...) are in keel.h; this
 * header needs only <stdint.h> and <stddef.h> and makes no system call, so it also builds for a
 * host.
 *
 * Format (little endian). Every message starts with an 8-byte header:
 *   +0 u8 type (KEEL_MSG_*)  +1 u8 flags (per type)  +2 u16 count (list items)  +4 u32 id
 * then the type's fields in order. A `str` is u16 length + bytes, a `blob` u32 length + bytes;
 * neither is NUL-terminated. Nothing follows the last field (trailing bytes are an error).
 *
 *   HTTP_REQUEST     method: str, url: str, timeout_ms: u32, headers: str x count, body: blob
 *   HTTP_RESPONSE    result: u8, reserved: u8, status: u16, headers: str x count, body: blob
 *   CONFIG_FETCH     (scope: u8, store: u8, key: str) x count
 *   CONFIG_RESULT    result: u8, (result: u8, value: blob) x count (items in request order)
 *   MQTT_CONNECT     flags bit0 clean_start, bit1 will; keepalive_s: u16,
 *                    [will: topic: str, payload: blob, qos: u8, retain: u8 (0/1)]
 *   MQTT_CONNECT_RESULT     flags bit0 session_present; state: u8, reason: u32
 *   MQTT_SUBSCRIBE          id; (topic: str, qos: u8) x count
 *   MQTT_SUBSCRIBE_RESULT   id; state: u8, codes: u8 x count
 *   MQTT_UNSUBSCRIBE        id; topic: str x count
 *   MQTT_UNSUBSCRIBE_RESULT id; state: u8
 *   MQTT_PUBLISH            id; flags bit0 retain; qos: u8, topic: str, payload: blob
 *   MQTT_PUBLISH_RESULT     id; state: u8, reason: u32
 *   MQTT_MESSAGE            id; flags bit0 retain; qos: u8, topic: str, payload: blob
 *   MQTT_ACK                id (the message's); no fields
 *   MQTT_LOST               reason: u8, topic: str, len: u32
 *   MQTT_DISCONNECT         no fields
 *   MQTT_DISCONNECT_RESULT  state: u8, code: u32
 *   MQTT_STATUS             state: u8 (KEEL_MSG_MQTT_SESSION_*), reason: str
 *   ERROR                   code: u8 (an HTTP-result-style code), text: str
 *
 * Encoders return the message length (> 0), or a negative KEEL_MSG_ERR_*. Nothing is written
 * past `cap`. keel_msg_decode() checks a whole message (every length, every list item, no
 * trailing bytes) before it returns 0, so the accessors that walk its lists cannot fail except
 * for an index out of range. Decoded strings point into the message (the channel's receive
 * buffer): they stay valid until keel_chan_consume().
 */
#ifndef KEEL_CHAN_H
#define KEEL_CHAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------- */
/* Constants (keel_channel::msg)                                                            */
/* ---------------------------------------------------------------------------------------- */

/* Message types (the header's first byte). */
#define KEEL_MSG_HTTP_REQUEST 0x01u
#define KEEL_MSG_HTTP_RESPONSE 0x02u
#define KEEL_MSG_CONFIG_FETCH 0x10u
#define KEEL_MSG_CONFIG_RESULT 0x11u
#define KEEL_MSG_MQTT_CONNECT 0x20u
#define KEEL_MSG_MQTT_CONNECT_RESULT 0x21u
#define KEEL_MSG_MQTT_SUBSCRIBE 0x22u
#define KEEL_MSG_MQTT_SUBSCRIBE_RESULT 0x23u
#define KEEL_MSG_MQTT_UNSUBSCRIBE 0x24u
#define KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT 0x25u
#define KEEL_MSG_MQTT_PUBLISH 0x26u
#define KEEL_MSG_MQTT_PUBLISH_RESULT 0x27u
#define KEEL_MSG_MQTT_MESSAGE 0x28u
#define KEEL_MSG_MQTT_ACK 0x29u
#define KEEL_MSG_MQTT_LOST 0x2Au
#define KEEL_MSG_MQTT_DISCONNECT 0x2Bu
#define KEEL_MSG_MQTT_DISCONNECT_RESULT 0x2Cu
#define KEEL_MSG_MQTT_STATUS 0x2Du
#define KEEL_MSG_ERROR 0x7Fu

/** Length of the header. */
#define KEEL_MSG_HEADER_LEN 8u
/** Most headers of an HTTP request or response. */
#define KEEL_MSG_MAX_HTTP_HEADERS 32u
/** Most keys in one configuration fetch. */
#define KEEL_MSG_MAX_CONFIG_KEYS 16u
/** Most topics in one MQTT (un)subscribe. */
#define KEEL_MSG_MAX_MQTT_TOPICS 8u

/* `result` of an HTTP response (and `code` of an ERROR message). */
/** The request was made; `status` is the remote server's. */
#define KEEL_MSG_HTTP_OK 0u
/** The URL's scheme is not https (or http where the policy allows it). */
#define KEEL_MSG_HTTP_UNSUPPORTED_SCHEME 1u
/** The method is not one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS. */
#define KEEL_MSG_HTTP_UNSUPPORTED_METHOD 2u
/** A header is malformed (not `Name: value`, a control character, too many). */
#define KEEL_MSG_HTTP_INVALID_HEADERS 3u
/** The timeout is outside 1000..=60000 ms. */
#define KEEL_MSG_HTTP_INVALID_TIMEOUT 4u
/** The request failed (DNS, connection, TLS); the body is a short reason. */
#define KEEL_MSG_HTTP_REQUEST_FAILED 5u
/** The response does not fit the channel's receive buffer. */
#define KEEL_MSG_HTTP_RESPONSE_TOO_LARGE 6u
/** The destination is denied by the account's policy; the body says which rule. */
#define KEEL_MSG_HTTP_DENIED 7u
/** No complete response within the timeout. */
#define KEEL_MSG_HTTP_TIMEOUT 8u
/** Too many requests from this device; retry later. */
#define KEEL_MSG_HTTP_RATE_LIMITED 9u
/** The request message is malformed. */
#define KEEL_MSG_HTTP_BAD_REQUEST 10u
/** A channel carries one request; this was another. */
#define KEEL_MSG_HTTP_ALREADY_SENT 11u

/* `result` of a config result (the message) and of each of its items. */
/** Done (the message) / found (an item). */
#define KEEL_MSG_CONFIG_OK 0u
/** The values do not fit the receive buffer (the message; no items follow). */
#define KEEL_MSG_CONFIG_RESPONSE_TOO_LARGE 1u
/** The request is malformed (the message). */
#define KEEL_MSG_CONFIG_BAD_REQUEST 2u
/** More than KEEL_MSG_MAX_CONFIG_KEYS keys (the message). */
#define KEEL_MSG_CONFIG_TOO_MANY_KEYS 3u
/** No such key (an item). */
#define KEEL_MSG_CONFIG_NOT_FOUND 4u
/** The key is not 1..=128 bytes of [A-Za-z0-9._/-], or scope/store unknown (an item). */
#define KEEL_MSG_CONFIG_INVALID_KEY 5u
/** The server could not read the value (an item). */
#define KEEL_MSG_CONFIG_SERVER_ERROR 6u

/* Scopes and stores of a configuration key. */
#define KEEL_MSG_CONFIG_SCOPE_ACCOUNT 0u
#define KEEL_MSG_CONFIG_SCOPE_DEVICE 1u
/** Write-only (through the API) secret store. */
#define KEEL_MSG_CONFIG_STORE_SECRET 0u
/** Readable configuration store. */
#define KEEL_MSG_CONFIG_STORE_CONFIG 1u

/* `state` of MQTT results. */
#define KEEL_MSG_MQTT_COMPLETED 0u
#define KEEL_MSG_MQTT_INVALID_PARAMETERS 1u
/** Connect on a channel that already connected: open a new channel. */
#define KEEL_MSG_MQTT_ALREADY_CONNECTED 2u
#define KEEL_MSG_MQTT_NOT_CONNECTED 3u
#define KEEL_MSG_MQTT_NX_DOMAIN 4u
#define KEEL_MSG_MQTT_UNKNOWN_CA 5u
#define KEEL_MSG_MQTT_CERTIFICATE_EXPIRED 6u
#define KEEL_MSG_MQTT_SOCKET_ERROR 7u
/** Too many requests in flight, or incoming messages were rate limited. */
#define KEEL_MSG_MQTT_RATE_LIMITED 8u
/** The broker is denied by the account's policy, or the profile is not configured. */
#define KEEL_MSG_MQTT_DENIED 9u

/* `state` of an MQTT_STATUS message: the managed session's connection to the broker. */
#define KEEL_MSG_MQTT_SESSION_CONNECTED 0u
#define KEEL_MSG_MQTT_SESSION_RECONNECTING 1u
#define KEEL_MSG_MQTT_SESSION_DOWN 2u

/* `reason` of an MQTT_LOST message (documented on keel_channel::msg::Msg::MqttLost). */
/** Larger than the channel's receive buffer. */
#define KEEL_MSG_MQTT_LOST_TOO_LARGE 1u
/** Rate limited. */
#define KEEL_MSG_MQTT_LOST_RATE_LIMITED 2u
/** The queue of a detached session overflowed. */
#define KEEL_MSG_MQTT_LOST_QUEUE_OVERFLOW 3u

/* Errors (negative results). */
/** The output buffer is too small. */
#define KEEL_MSG_ERR_BUFFER_TOO_SMALL (-1)
/** Not a valid message (truncated, trailing bytes, a list too long, a value out of range), or
 *  an argument the encoder refuses (a list too long, a str over 65535 bytes, a NULL pointer
 *  with a non-zero length). */
#define KEEL_MSG_ERR_MALFORMED (-2)
/** The type byte is unknown (or is a request, which apps send but never receive). */
#define KEEL_MSG_ERR_UNKNOWN_TYPE (-3)
/** A list index out of range. */
#define KEEL_MSG_ERR_INDEX (-4)

/* ---------------------------------------------------------------------------------------- */
/* Types                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/** Bytes with a length (not NUL-terminated). */
typedef struct keel_msg_str {
    const uint8_t *data;
    uint32_t len;
} keel_msg_str_t;

/** A keel_msg_str_t of a string literal. */
#define KEEL_MSG_STR(lit) ((keel_msg_str_t){(const uint8_t *)(lit), (uint32_t)(sizeof(lit) - 1u)})

/** A keel_msg_str_t of a NUL-terminated string (NULL gives the empty string). */
static inline keel_msg_str_t keel_msg_cstr(const char *s)
{
    keel_msg_str_t r = {(const uint8_t *)s, 0};
    if (s != NULL) {
        while (s[r.len] != '\0') {
            r.len++;
        }
    }
    return r;
}

/** One key of a configuration fetch. */
typedef struct keel_msg_key {
    uint8_t scope; /**< KEEL_MSG_CONFIG_SCOPE_* */
    uint8_t store; /**< KEEL_MSG_CONFIG_STORE_* */
    keel_msg_str_t key;
} keel_msg_key_t;

/** One MQTT subscription. */
typedef struct keel_msg_sub {
    keel_msg_str_t topic; /**< Topic filter. */
    uint8_t qos;          /**< 0 or 1. */
} keel_msg_sub_t;

/** An MQTT will message. */
typedef struct keel_msg_will {
    keel_msg_str_t topic;
    keel_msg_str_t payload;
    uint8_t qos;    /**< 0 or 1. */
    uint8_t retain; /**< 0 or 1. */
} keel_msg_will_t;

/** A decoded message (keel_msg_decode()). Strings point into the decoded bytes. */
typedef struct keel_msg {
    uint8_t type;   /**< KEEL_MSG_* */
    uint8_t flags;  /**< The header's flags. */
    uint16_t count; /**< The header's list count. */
    uint32_t id;    /**< The header's correlation id. */
    union {
        /** KEEL_MSG_HTTP_RESPONSE: `count` headers (keel_msg_http_header()). */
        struct {
            uint8_t result;  /**< KEEL_MSG_HTTP_* */
            uint16_t status; /**< The remote server's status (0 unless result is OK). */
            keel_msg_str_t headers_raw; /**< The encoded header list. */
            keel_msg_str_t body;
        } http_response;
        /** KEEL_MSG_CONFIG_RESULT: `count` items (keel_msg_config_item()). */
        struct {
            uint8_t result; /**< KEEL_MSG_CONFIG_* */
            keel_msg_str_t items_raw; /**< The encoded item list. */
        } config_result;
        /** KEEL_MSG_MQTT_CONNECT_RESULT. */
        struct {
            uint8_t state; /**< KEEL_MSG_MQTT_* */
            uint8_t session_present;
            uint32_t reason; /**< The broker's reason code. */
        } mqtt_connect_result;
        /** KEEL_MSG_MQTT_SUBSCRIBE_RESULT: `count` codes, one per topic. */
        struct {
            uint8_t state;
            keel_msg_str_t codes;
        } mqtt_subscribe_result;
        /** KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT. */
        struct {
            uint8_t state;
        } mqtt_unsubscribe_result;
        /** KEEL_MSG_MQTT_PUBLISH_RESULT. */
        struct {
            uint8_t state;
            uint32_t reason;
        } mqtt_publish_result;
        /** KEEL_MSG_MQTT_MESSAGE (`id` is the delivery id to acknowledge with MQTT_ACK). */
        struct {
            uint8_t qos;
            uint8_t retain;
            keel_msg_str_t topic;
            keel_msg_str_t payload;
        } mqtt_message;
        /** KEEL_MSG_MQTT_LOST. */
        struct {
            uint8_t reason; /**< KEEL_MSG_MQTT_LOST_* */
            keel_msg_str_t topic;
            uint32_t len; /**< The lost payload's length. */
        } mqtt_lost;
        /** KEEL_MSG_MQTT_DISCONNECT_RESULT. */
        struct {
            uint8_t state;
            uint32_t code;
        } mqtt_disconnect_result;
        /** KEEL_MSG_MQTT_STATUS. */
        struct {
            uint8_t state; /**< KEEL_MSG_MQTT_SESSION_* */
            keel_msg_str_t reason;
        } mqtt_status;
        /** KEEL_MSG_ERROR. */
        struct {
            uint8_t code;
            keel_msg_str_t text;
        } error;
    } u;
} keel_msg_t;

/* ---------------------------------------------------------------------------------------- */
/* Writer (low level; the encoders below use it)                                            */
/* ---------------------------------------------------------------------------------------- */

/** Writes into buf[0..cap); counts past the end so that the length needed is known. */
typedef struct keel_msg_writer {
    uint8_t *buf;
    uint32_t cap;
    uint32_t pos;
    int err; /**< 0 or the first KEEL_MSG_ERR_* */
} keel_msg_writer_t;

static inline void keel_msg_w_init(keel_msg_writer_t *w, void *buf, uint32_t cap)
{
    w->buf = (uint8_t *)buf;
    w->cap = buf != NULL ? cap : 0;
    w->pos = 0;
    w->err = 0;
}

/** Records KEEL_MSG_ERR_MALFORMED unless an error is recorded already (internal). */
static inline void keel_msg__w_malformed(keel_msg_writer_t *w)
{
    w->err = w->err ? w->err : KEEL_MSG_ERR_MALFORMED;
}

static inline void keel_msg_w_bytes(keel_msg_writer_t *w, const void *p, uint32_t n)
{
    const uint8_t *s = (const uint8_t *)p;
    if ((n != 0 && s == NULL) || n > 0xFFFFFFFFu - w->pos) {
        keel_msg__w_malformed(w);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (w->pos + i < w->cap) {
            w->buf[w->pos + i] = s[i];
        }
    }
    w->pos += n;
}

static inline void keel_msg_w_u8(keel_msg_writer_t *w, uint32_t v)
{
    uint8_t b = (uint8_t)v;
    keel_msg_w_bytes(w, &b, 1);
}

static inline void keel_msg_w_u16(keel_msg_writer_t *w, uint32_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    keel_msg_w_bytes(w, b, 2);
}

static inline void keel_msg_w_u32(keel_msg_writer_t *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    keel_msg_w_bytes(w, b, 4);
}

/** A `str`: u16 length + bytes; longer than 65535 bytes is an error. */
static inline void keel_msg_w_str(keel_msg_writer_t *w, keel_msg_str_t s)
{
    if (s.len > 0xFFFFu) {
        keel_msg__w_malformed(w);
        return;
    }
    keel_msg_w_u16(w, s.len);
    keel_msg_w_bytes(w, s.data, s.len);
}

/** A `blob`: u32 length + bytes. */
static inline void keel_msg_w_blob(keel_msg_writer_t *w, keel_msg_str_t b)
{
    keel_msg_w_u32(w, b.len);
    keel_msg_w_bytes(w, b.data, b.len);
}

/** The 8-byte header. `count` above `max` is an error. */
static inline void keel_msg_w_header(keel_msg_writer_t *w, uint32_t type, uint32_t flags,
                                     uint32_t count, uint32_t max, uint32_t id)
{
    if (count > max) {
        keel_msg__w_malformed(w);
        return;
    }
    keel_msg_w_u8(w, type);
    keel_msg_w_u8(w, flags);
    keel_msg_w_u16(w, count);
    keel_msg_w_u32(w, id);
}

/** Starts a message in buf[0..cap) with its header (internal: the encoders' first step). */
static inline void keel_msg__w_begin(keel_msg_writer_t *w, void *buf, uint32_t cap, uint32_t type,
                                     uint32_t flags, uint32_t count, uint32_t max, uint32_t id)
{
    keel_msg_w_init(w, buf, cap);
    keel_msg_w_header(w, type, flags, count, max, id);
}

/** The message's length, or KEEL_MSG_ERR_MALFORMED / KEEL_MSG_ERR_BUFFER_TOO_SMALL. */
static inline int32_t keel_msg_w_finish(const keel_msg_writer_t *w)
{
    if (w->err != 0) {
        return w->err;
    }
    if (w->pos > w->cap) {
        return KEEL_MSG_ERR_BUFFER_TOO_SMALL;
    }
    if (w->pos > 0x7FFFFFFFu) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    return (int32_t)w->pos;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoders (app -> server)                                                                 */
/* ---------------------------------------------------------------------------------------- */

/**
 * keel_msg_http_request - an HTTP request: `method` (GET, POST, ...), `url`
 * (https://host[:port]/path?query), `timeout_ms` (1000..=60000), `n_headers` headers
 * ("Name: value" each, at most KEEL_MSG_MAX_HTTP_HEADERS; `headers` may be NULL when 0), `body`.
 */
static inline int32_t keel_msg_http_request(void *buf, uint32_t cap, keel_msg_str_t method,
                                            keel_msg_str_t url, uint32_t timeout_ms,
                                            const keel_msg_str_t *headers, uint32_t n_headers,
                                            keel_msg_str_t body)
{
    if (n_headers != 0 && headers == NULL) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_HTTP_REQUEST, 0, n_headers, KEEL_MSG_MAX_HTTP_HEADERS,
                      0);
    keel_msg_w_str(&w, method);
    keel_msg_w_str(&w, url);
    keel_msg_w_u32(&w, timeout_ms);
    for (uint32_t i = 0; i < n_headers && w.err == 0; i++) {
        keel_msg_w_str(&w, headers[i]);
    }
    keel_msg_w_blob(&w, body);
    return keel_msg_w_finish(&w);
}

/** keel_msg_config_fetch - a fetch of `n_keys` configuration values/secrets (at most
 *  KEEL_MSG_MAX_CONFIG_KEYS). */
static inline int32_t keel_msg_config_fetch(void *buf, uint32_t cap, const keel_msg_key_t *keys,
                                            uint32_t n_keys)
{
    if (n_keys != 0 && keys == NULL) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_CONFIG_FETCH, 0, n_keys, KEEL_MSG_MAX_CONFIG_KEYS, 0);
    for (uint32_t i = 0; i < n_keys && w.err == 0; i++) {
        keel_msg_w_u8(&w, keys[i].scope);
        keel_msg_w_u8(&w, keys[i].store);
        keel_msg_w_str(&w, keys[i].key);
    }
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_connect - connect the managed session to its broker (once per channel).
 *  `will` may be NULL. */
static inline int32_t keel_msg_mqtt_connect(void *buf, uint32_t cap, int clean_start,
                                            uint16_t keepalive_s, const keel_msg_will_t *will)
{
    uint32_t flags = (clean_start ? 1u : 0u) | (will != NULL ? 2u : 0u);
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_CONNECT, flags, 0, 0, 0);
    keel_msg_w_u16(&w, keepalive_s);
    if (will != NULL) {
        keel_msg_w_str(&w, will->topic);
        keel_msg_w_blob(&w, will->payload);
        keel_msg_w_u8(&w, will->qos);
        keel_msg_w_u8(&w, will->retain ? 1u : 0u);
    }
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_subscribe - subscribe to `n` topic filters (at most
 *  KEEL_MSG_MAX_MQTT_TOPICS); `id` comes back in the result. */
static inline int32_t keel_msg_mqtt_subscribe(void *buf, uint32_t cap, uint32_t id,
                                              const keel_msg_sub_t *subs, uint32_t n)
{
    if (n != 0 && subs == NULL) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_SUBSCRIBE, 0, n, KEEL_MSG_MAX_MQTT_TOPICS, id);
    for (uint32_t i = 0; i < n && w.err == 0; i++) {
        keel_msg_w_str(&w, subs[i].topic);
        keel_msg_w_u8(&w, subs[i].qos);
    }
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_unsubscribe - unsubscribe from `n` topic filters. */
static inline int32_t keel_msg_mqtt_unsubscribe(void *buf, uint32_t cap, uint32_t id,
                                                const keel_msg_str_t *topics, uint32_t n)
{
    if (n != 0 && topics == NULL) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_UNSUBSCRIBE, 0, n, KEEL_MSG_MAX_MQTT_TOPICS, id);
    for (uint32_t i = 0; i < n && w.err == 0; i++) {
        keel_msg_w_str(&w, topics[i]);
    }
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_publish - publish `payload` on `topic` (qos 0 or 1). */
static inline int32_t keel_msg_mqtt_publish(void *buf, uint32_t cap, uint32_t id, uint8_t qos,
                                            int retain, keel_msg_str_t topic,
                                            keel_msg_str_t payload)
{
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_PUBLISH, retain ? 1u : 0u, 0, 0, id);
    keel_msg_w_u8(&w, qos);
    keel_msg_w_str(&w, topic);
    keel_msg_w_blob(&w, payload);
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_ack - acknowledge the QoS 1 message with delivery id `id`. */
static inline int32_t keel_msg_mqtt_ack(void *buf, uint32_t cap, uint32_t id)
{
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_ACK, 0, 0, 0, id);
    return keel_msg_w_finish(&w);
}

/** keel_msg_mqtt_disconnect - disconnect from the broker cleanly (the will is not sent). */
static inline int32_t keel_msg_mqtt_disconnect(void *buf, uint32_t cap)
{
    keel_msg_writer_t w;
    keel_msg__w_begin(&w, buf, cap, KEEL_MSG_MQTT_DISCONNECT, 0, 0, 0, 0);
    return keel_msg_w_finish(&w);
}

/* ---------------------------------------------------------------------------------------- */
/* Decoder (server -> app)                                                                  */
/* ---------------------------------------------------------------------------------------- */

/** A reader over one message (internal). */
typedef struct keel_msg__reader {
    const uint8_t *b;
    uint32_t len;
    uint32_t pos;
    int bad;
} keel_msg__reader_t;

static inline const uint8_t *keel_msg__take(keel_msg__reader_t *r, uint32_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->b + r->pos;
    r->pos += n;
    return p;
}

static inline uint8_t keel_msg__u8(keel_msg__reader_t *r)
{
    const uint8_t *p = keel_msg__take(r, 1);
    return p ? p[0] : 0;
}

static inline uint16_t keel_msg__u16(keel_msg__reader_t *r)
{
    const uint8_t *p = keel_msg__take(r, 2);
    return p ? (uint16_t)(p[0] | (uint16_t)p[1] << 8) : 0;
}

static inline uint32_t keel_msg__u32(keel_msg__reader_t *r)
{
    const uint8_t *p = keel_msg__take(r, 4);
    return p ? ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24)
             : 0;
}

/** The next `n` bytes (empty if there are fewer). */
static inline keel_msg_str_t keel_msg__bytes(keel_msg__reader_t *r, uint32_t n)
{
    keel_msg_str_t s = {NULL, 0};
    const uint8_t *p = keel_msg__take(r, n);
    if (p != NULL) {
        s.data = p;
        s.len = n;
    }
    return s;
}

static inline keel_msg_str_t keel_msg__str(keel_msg__reader_t *r)
{
    return keel_msg__bytes(r, keel_msg__u16(r));
}

static inline keel_msg_str_t keel_msg__blob(keel_msg__reader_t *r)
{
    return keel_msg__bytes(r, keel_msg__u32(r));
}

/**
 * keel_msg_type - the type byte of a message of `len` bytes (0 if it is shorter than a header).
 * Cheap: it checks nothing else (use keel_msg_decode() for that).
 */
static inline uint32_t keel_msg_type(const void *msg, uint32_t len)
{
    return (msg != NULL && len >= KEEL_MSG_HEADER_LEN) ? ((const uint8_t *)msg)[0] : 0u;
}

/**
 * keel_msg_decode - decodes and checks one whole message the server sent (HTTP_RESPONSE,
 * CONFIG_RESULT, MQTT_*_RESULT, MQTT_MESSAGE, MQTT_LOST, MQTT_STATUS, ERROR).
 *
 * Returns 0, KEEL_MSG_ERR_MALFORMED (truncated, trailing bytes, a list longer than its limit,
 * unknown flags) or KEEL_MSG_ERR_UNKNOWN_TYPE (a type apps never receive).
 */
static inline int keel_msg_decode(const void *msg, uint32_t len, keel_msg_t *out)
{
    keel_msg__reader_t r = {(const uint8_t *)msg, msg != NULL ? len : 0, 0, 0};
    keel_msg_t m;
    m.type = keel_msg__u8(&r);
    m.flags = keel_msg__u8(&r);
    m.count = keel_msg__u16(&r);
    m.id = keel_msg__u32(&r);
    if (r.bad) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    switch (m.type) {
    case KEEL_MSG_HTTP_RESPONSE: {
        if (m.count > KEEL_MSG_MAX_HTTP_HEADERS) {
            return KEEL_MSG_ERR_MALFORMED;
        }
        m.u.http_response.result = keel_msg__u8(&r);
        (void)keel_msg__u8(&r);
        m.u.http_response.status = keel_msg__u16(&r);
        uint32_t start = r.pos;
        for (uint32_t i = 0; i < m.count; i++) {
            (void)keel_msg__str(&r);
        }
        m.u.http_response.headers_raw.data = r.b + start;
        m.u.http_response.headers_raw.len = r.pos - start;
        m.u.http_response.body = keel_msg__blob(&r);
        break;
    }
    case KEEL_MSG_CONFIG_RESULT: {
        if (m.count > KEEL_MSG_MAX_CONFIG_KEYS) {
            return KEEL_MSG_ERR_MALFORMED;
        }
        m.u.config_result.result = keel_msg__u8(&r);
        uint32_t start = r.pos;
        for (uint32_t i = 0; i < m.count; i++) {
            (void)keel_msg__u8(&r);
            (void)keel_msg__blob(&r);
        }
        m.u.config_result.items_raw.data = r.b + start;
        m.u.config_result.items_raw.len = r.pos - start;
        break;
    }
    case KEEL_MSG_MQTT_CONNECT_RESULT:
        m.u.mqtt_connect_result.state = keel_msg__u8(&r);
        m.u.mqtt_connect_result.reason = keel_msg__u32(&r);
        m.u.mqtt_connect_result.session_present = (m.flags & 1u) ? 1u : 0u;
        break;
    case KEEL_MSG_MQTT_SUBSCRIBE_RESULT: {
        if (m.count > KEEL_MSG_MAX_MQTT_TOPICS) {
            return KEEL_MSG_ERR_MALFORMED;
        }
        m.u.mqtt_subscribe_result.state = keel_msg__u8(&r);
        m.u.mqtt_subscribe_result.codes = keel_msg__bytes(&r, m.count);
        break;
    }
    case KEEL_MSG_MQTT_UNSUBSCRIBE_RESULT:
        m.u.mqtt_unsubscribe_result.state = keel_msg__u8(&r);
        break;
    case KEEL_MSG_MQTT_PUBLISH_RESULT:
        m.u.mqtt_publish_result.state = keel_msg__u8(&r);
        m.u.mqtt_publish_result.reason = keel_msg__u32(&r);
        break;
    case KEEL_MSG_MQTT_MESSAGE:
        if (m.flags & ~1u) {
            return KEEL_MSG_ERR_MALFORMED;
        }
        m.u.mqtt_message.qos = keel_msg__u8(&r);
        m.u.mqtt_message.topic = keel_msg__str(&r);
        m.u.mqtt_message.payload = keel_msg__blob(&r);
        m.u.mqtt_message.retain = (m.flags & 1u) ? 1u : 0u;
        break;
    case KEEL_MSG_MQTT_LOST:
        m.u.mqtt_lost.reason = keel_msg__u8(&r);
        m.u.mqtt_lost.topic = keel_msg__str(&r);
        m.u.mqtt_lost.len = keel_msg__u32(&r);
        break;
    case KEEL_MSG_MQTT_DISCONNECT_RESULT:
        m.u.mqtt_disconnect_result.state = keel_msg__u8(&r);
        m.u.mqtt_disconnect_result.code = keel_msg__u32(&r);
        break;
    case KEEL_MSG_MQTT_STATUS:
        m.u.mqtt_status.state = keel_msg__u8(&r);
        m.u.mqtt_status.reason = keel_msg__str(&r);
        break;
    case KEEL_MSG_ERROR:
        m.u.error.code = keel_msg__u8(&r);
        m.u.error.text = keel_msg__str(&r);
        break;
    default:
        return KEEL_MSG_ERR_UNKNOWN_TYPE;
    }
    if (r.bad || r.pos != r.len) {
        return KEEL_MSG_ERR_MALFORMED;
    }
    if (out != NULL) {
        *out = m;
    }
    return 0;
}

/** keel_msg_http_header - header `i` ("Name: value") of a decoded HTTP_RESPONSE. Returns 0 or
 *  KEEL_MSG_ERR_INDEX (also for another type). */
static inline int keel_msg_http_header(const keel_msg_t *m, uint32_t i, keel_msg_str_t *out)
{
    if (m->type != KEEL_MSG_HTTP_RESPONSE || i >= m->count) {
        return KEEL_MSG_ERR_INDEX;
    }
    keel_msg__reader_t r = {m->u.http_response.headers_raw.data,
                            m->u.http_response.headers_raw.len, 0, 0};
    keel_msg_str_t s = {NULL, 0};
    for (uint32_t k = 0; k <= i; k++) {
        s = keel_msg__str(&r);
    }
    if (r.bad) {
        return KEEL_MSG_ERR_INDEX;
    }
    *out = s;
    return 0;
}

/** keel_msg_config_item - item `i` of a decoded CONFIG_RESULT: its result (KEEL_MSG_CONFIG_*)
 *  and value. Returns 0 or KEEL_MSG_ERR_INDEX (also for another type). */
static inline int keel_msg_config_item(const keel_msg_t *m, uint32_t i, uint8_t *result,
                                       keel_msg_str_t *value)
{
    if (m->type != KEEL_MSG_CONFIG_RESULT || i >= m->count) {
        return KEEL_MSG_ERR_INDEX;
    }
    keel_msg__reader_t r = {m->u.config_result.items_raw.data,
                            m->u.config_result.items_raw.len, 0, 0};
    uint8_t res = 0;
    keel_msg_str_t v = {NULL, 0};
    for (uint32_t k = 0; k <= i; k++) {
        res = keel_msg__u8(&r);
        v = keel_msg__blob(&r);
    }
    if (r.bad) {
        return KEEL_MSG_ERR_INDEX;
    }
    if (result != NULL) {
        *result = res;
    }
    if (value != NULL) {
        *value = v;
    }
    return 0;
}

/** keel_msg_split_header - splits "Name: value" into name and value (value without leading
 *  spaces or tabs). Returns 0, or KEEL_MSG_ERR_MALFORMED if there is no colon. */
static inline int keel_msg_split_header(keel_msg_str_t h, keel_msg_str_t *name,
                                        keel_msg_str_t *value)
{
    for (uint32_t i = 0; i < h.len; i++) {
        if (h.data[i] == ':') {
            uint32_t v = i + 1;
            while (v < h.len && (h.data[v] == ' ' || h.data[v] == '\t')) {
                v++;
            }
            name->data = h.data;
            name->len = i;
            value->data = h.data + v;
            value->len = h.len - v;
            return 0;
        }
    }
    return KEEL_MSG_ERR_MALFORMED;
}

/** keel_msg_str_eq - 1 if `s` holds exactly the NUL-terminated string `c`. */
static inline int keel_msg_str_eq(keel_msg_str_t s, const char *c)
{
    uint32_t i = 0;
    for (; i < s.len; i++) {
        if (c[i] == '\0' || (uint8_t)c[i] != s.data[i]) {
            return 0;
        }
    }
    return c[i] == '\0';
}

#ifdef __cplusplus
}
#endif

#endif /* KEEL_CHAN_H */
