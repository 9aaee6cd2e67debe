/*
 * mv_syscalls.h - Microvisor-compatible app API for Keel (C).
 *
 * Apps written for Twilio/KORE Microvisor's `mv*` system calls build against this header and
 * link sdk/c/compat/mv_compat.c, which implements the calls on top of Keel's ABI (keel.h) and
 * channel messages (keel_chan.h). It was written from the public documentation of that API
 * (names, values and documented behaviour); where the documentation says nothing (some struct
 * layouts, a few enum values) the choice made here is marked "compat:". It is source
 * compatible, not binary compatible: rebuild the app. See sdk/c/compat/README.md for what
 * differs and how to port an app.
 *
 * Calls return enum MvStatus; handles are 32-bit values, never 0; close/release calls take a
 * pointer and write 0 through it. Structs with a `version` want version 1.
 */
#ifndef MV_SYSCALLS_H
#define MV_SYSCALLS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------- */
/* Status                                                                                   */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus {
    MV_STATUS_OKAY = 0x00,
    MV_STATUS_TIMENOTSET = 0x01,
    MV_STATUS_PARAMETERFAULT = 0x02,
    MV_STATUS_INVALIDBUFFERSIZE = 0x03,
    MV_STATUS_PERIPHERALACCESSFAULT = 0x04,
    MV_STATUS_BUFFERALREADYINUSE = 0x05,
    MV_STATUS_INVALIDINTERRUPT = 0x06,
    MV_STATUS_INVALIDHANDLE = 0x07,
    MV_STATUS_TOOMANYNOTIFICATIONBUFFERS = 0x08,
    MV_STATUS_INVALIDVECTOR = 0x09,
    MV_STATUS_UNAVAILABLE = 0x0a,
    MV_STATUS_UNSUPPORTEDSTRUCTUREVERSION = 0x0b,
    MV_STATUS_TOOMANYCHANNELS = 0x0c,
    MV_STATUS_UNKNOWNCHANNELENDPOINT = 0x0d,
    MV_STATUS_UNKNOWNCHANNELTYPE = 0x0e,
    MV_STATUS_CHANNELCLOSED = 0x0f,
    MV_STATUS_NETWORKNOTCONNECTED = 0x10,
    MV_STATUS_RATELIMITED = 0x11,
    MV_STATUS_INVALIDBUFFERALIGNMENT = 0x12,
    MV_STATUS_LATEFAULT = 0x13,
    MV_STATUS_RESPONSENOTPRESENT = 0x14,
    MV_STATUS_INDEXINVALID = 0x15,
    MV_STATUS_OFFSETINVALID = 0x16,
    MV_STATUS_REQUESTALREADYSENT = 0x17,
    MV_STATUS_REQUESTUNSUCCESSFUL = 0x18,
    MV_STATUS_LOGMESSAGETOOLONG = 0x19,
    MV_STATUS_LOGGINGDISABLEDBYSERVER = 0x1a,
    MV_STATUS_TOOMANYCONFIGKEYS = 0x1b,
    MV_STATUS_UNKNOWNCONFIGSTORE = 0x1c,
    MV_STATUS_UNKNOWNCONFIGSCOPE = 0x1d,
    MV_STATUS_INVALIDCONFIGKEY = 0x1e,
    MV_STATUS_INVALIDAUTHENTICATION = 0x1f,
    MV_STATUS_WRONGDATAREQUESTED = 0x20,
    MV_STATUS_INTERNALERROR = 0x21,
    MV_STATUS_TOOMANYELEMENTS = 0x22,
    MV_STATUS_REQUIREDELEMENTMISSING = 0x23,
    MV_STATUS_MICROVISORBUSY = 0x24,
    MV_STATUS_ADDRESSOUTOFRANGE = 0x25,
    MV_STATUS_INPUTTOOLONG = 0x26
};

/** compat: the name of a status without its prefix ("OKAY", "CHANNELCLOSED", ...), for logs. */
const char *mvStatusName(enum MvStatus status);

typedef uint32_t MvNotificationHandle;
typedef uint32_t MvNetworkHandle;
typedef uint32_t MvChannelHandle;
typedef uint32_t MvSystemEventHandle;

/** Bytes with a length; need not be NUL-terminated. */
struct MvSizedString {
    const uint8_t *data;
    uint32_t length;
};

/** An output buffer: `size` bytes at `data`; the call writes the full length to *length. */
struct MvSizedStringBuffer {
    uint8_t *data;
    uint32_t size;
    uint32_t *length;
};

/* ---------------------------------------------------------------------------------------- */
/* Time, identity, misc                                                                     */
/* ---------------------------------------------------------------------------------------- */

enum MvStatus mvNoOp(void);
/** Microseconds since the visor started (Keel's monotonic clock). */
enum MvStatus mvGetMicroseconds(uint64_t *usec);
/** Microseconds since the Unix epoch; MV_STATUS_TIMENOTSET until the server set the clock. */
enum MvStatus mvGetWallTime(uint64_t *usec);
/** The device id: 34 ASCII bytes, not NUL-terminated (on Keel "kd" + 32 hex digits).
 *  `len` must be at least 34. */
enum MvStatus mvGetDeviceId(uint8_t *buf, uint32_t len);
/** compat: the board's clocks are fixed values (MV_COMPAT_SYSCLK_HZ, default 20 MHz). */
enum MvStatus mvGetSysClk(uint32_t *hz);
enum MvStatus mvGetHClk(uint32_t *hz);
enum MvStatus mvGetPClk1(uint32_t *hz);
enum MvStatus mvGetPClk2(uint32_t *hz);
/** compat: not supported (no peripheral is shared with the visor): MV_STATUS_PERIPHERALACCESSFAULT. */
enum MvStatus mvPeriphPeek32(uint32_t reg, uint32_t *output);
enum MvStatus mvPeriphPoke32(uint32_t reg, uint32_t mask, uint32_t xorvalue);

/* ---------------------------------------------------------------------------------------- */
/* Notifications                                                                            */
/* ---------------------------------------------------------------------------------------- */

enum MvEventType {
    MV_EVENTTYPE_NOEVENT = 0,
    MV_EVENTTYPE_NETWORKSTATUSCHANGED = 1,
    MV_EVENTTYPE_CHANNELDATAREADABLE = 2,
    MV_EVENTTYPE_CHANNELDATAWRITESPACE = 3,
    MV_EVENTTYPE_CHANNELNOTCONNECTED = 4,
    MV_EVENTTYPE_UPDATEDOWNLOADED = 5
};

/** One notification record (16 bytes), written into the app's buffer in ring order. */
struct MvNotification {
    uint64_t microseconds; /**< mvGetMicroseconds() time of the event. */
    enum MvEventType event_type;
    uint32_t tag; /**< The tag given when the source was registered. */
};

struct MvNotificationSetup {
    uint32_t irq;                   /**< The app's interrupt for this buffer (see README). */
    struct MvNotification *buffer;  /**< 4-aligned (8 recommended), in RAM. */
    uint32_t buffer_size;           /**< Bytes: a multiple of 16, at least 32. */
};

/** Sets up a notification buffer. For each record written to `buffer` (at the next index,
 *  wrapping), the handler of `irq` in the app's vector table runs once.
 *  Errors: PARAMETERFAULT, INVALIDBUFFERSIZE, BUFFERALREADYINUSE, INVALIDINTERRUPT,
 *  TOOMANYNOTIFICATIONBUFFERS (compat: at most MV_COMPAT_MAX_CENTERS, default 4). */
enum MvStatus mvSetupNotifications(const struct MvNotificationSetup *notifications,
                                   MvNotificationHandle *handle_out);
/** Stops writing to the buffer (objects that use it just stop notifying); zeroes the handle. */
enum MvStatus mvCloseNotifications(MvNotificationHandle *handle_in_out);

enum MvSystemNotificationSource {
    MV_SYSTEMNOTIFICATIONSOURCE_NETWORK = 0, /**< NETWORKSTATUSCHANGED events */
    MV_SYSTEMNOTIFICATIONSOURCE_UPDATE = 1   /**< UPDATEDOWNLOADED events */
};

struct MvOpenSystemNotificationParams {
    MvNotificationHandle notification_handle;
    uint32_t notification_tag;
    enum MvSystemNotificationSource notification_source;
};

/** Errors: UNAVAILABLE (from an interrupt), PARAMETERFAULT, INVALIDHANDLE. An update that was
 *  downloaded before the UPDATE source was opened is reported at once. */
enum MvStatus mvOpenSystemNotification(const struct MvOpenSystemNotificationParams *params,
                                       MvSystemEventHandle *handle);
enum MvStatus mvCloseSystemNotification(MvSystemEventHandle *handle);

/* ---------------------------------------------------------------------------------------- */
/* Network                                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum MvNetworkStatus {
    MV_NETWORKSTATUS_DELIBERATELYOFFLINE = 0,
    MV_NETWORKSTATUS_CONNECTED = 1,
    MV_NETWORKSTATUS_CONNECTING = 2,
    MV_NETWORKSTATUS_DISCONNECTEDWITHLINKUP = 3
};

/** Bit field (mvGetNetworkReasons()). */
enum MvNetworkReason {
    MV_NETWORKREASON_NOTCONNECTING = 0x0,
    MV_NETWORKREASON_USINGNETWORK = 0x1,
    MV_NETWORKREASON_NEVERUSEDNETWORKAPI = 0x2,
    MV_NETWORKREASON_MINIMUMCHECKINEXPIRED = 0x4,
    MV_NETWORKREASON_RTCNOTSET = 0x8,
    MV_NETWORKREASON_KERNELERROR = 0x10,
    MV_NETWORKREASON_APPLICATIONERROR = 0x20,
    MV_NETWORKREASON_COLDBOOTCONNECTION = 0x40,
    MV_NETWORKREASON_FETCHINGUPDATE = 0x80,
    MV_NETWORKREASON_DEBUGGERATTACHED = 0x100,
    MV_NETWORKREASON_NOAPPLICATIONCODE = 0x200,
    MV_NETWORKREASON_ENHANCECALM = 0x800
};

struct MvRequestNetworkParams {
    uint32_t version; /**< 1 */
    union {
        struct {
            MvNotificationHandle notification_handle; /**< 0: no notifications (compat) */
            uint32_t notification_tag;
        } v1;
    };
};

enum MvStatus mvRequestNetwork(const struct MvRequestNetworkParams *params,
                               MvNetworkHandle *handle);
enum MvStatus mvReleaseNetwork(MvNetworkHandle *handle);
enum MvStatus mvGetNetworkStatus(MvNetworkHandle handle, enum MvNetworkStatus *status);
/** *reasons is a bit field of enum MvNetworkReason values; *request_ref_count the network
 *  handles the app holds. */
enum MvStatus mvGetNetworkReasons(enum MvNetworkReason *reasons, uint32_t *request_ref_count);

/* ---------------------------------------------------------------------------------------- */
/* Channels                                                                                 */
/* ---------------------------------------------------------------------------------------- */

enum MvChannelType {
    MV_CHANNELTYPE_OPAQUEBYTES = 0, /**< compat: not supported (UNKNOWNCHANNELTYPE) */
    MV_CHANNELTYPE_MQTT = 1,
    MV_CHANNELTYPE_HTTP = 2,
    MV_CHANNELTYPE_CONFIGFETCH = 3
};

enum MvClosureReason {
    MV_CLOSUREREASON_NONE = 0,
    MV_CLOSUREREASON_CHANNELCLOSEDBYSERVER = 1,
    MV_CLOSUREREASON_CHANNELRESETBYSERVER = 2,
    MV_CLOSUREREASON_NETWORKDISCONNECTED = 3,
    MV_CLOSUREREASON_CONNECTIONTERMINATED = 4,
    MV_CLOSUREREASON_NOTYETOPEN = 5,
    MV_CLOSUREREASON_CLOSEDBYAPPLICATION = 6,
    MV_CLOSUREREASON_UNEXPECTEDLYTERMINATED = 7
};

struct MvOpenChannelParams {
    uint32_t version; /**< 1 */
    union {
        struct {
            MvNotificationHandle notification_handle;
            uint32_t notification_tag;
            MvNetworkHandle network_handle;
            uint8_t *receive_buffer; /**< 4-aligned (Microvisor's 512 is fine) */
            uint32_t receive_buffer_len; /**< multiple of 4, 64..65536 */
            uint8_t *send_buffer;
            uint32_t send_buffer_len;
            enum MvChannelType channel_type;
            struct MvSizedString endpoint; /**< MQTT: the server's broker profile ("" =
                                                "default"); HTTP, CONFIGFETCH: empty */
        } v1;
    };
};

/** Errors: PARAMETERFAULT, INVALIDHANDLE, INVALIDBUFFERALIGNMENT, INVALIDBUFFERSIZE,
 *  BUFFERALREADYINUSE, UNKNOWNCHANNELENDPOINT, UNKNOWNCHANNELTYPE, NETWORKNOTCONNECTED,
 *  RATELIMITED, TOOMANYCHANNELS (compat: Keel's 8). */
enum MvStatus mvOpenChannel(const struct MvOpenChannelParams *params, MvChannelHandle *handle);
/** compat: the oldest unread message (or its unread rest) in place. OKAY with *length_out = 0
 *  when nothing waits. */
enum MvStatus mvReadChannel(MvChannelHandle handle, uint8_t **read_pointer_out,
                            uint32_t *length_out);
enum MvStatus mvReadChannelComplete(MvChannelHandle handle, uint32_t consumed);
/** compat: sends `len` bytes as one message (all or nothing); *written = len. */
enum MvStatus mvWriteChannelStream(MvChannelHandle handle, const uint8_t *data, uint32_t len,
                                   uint32_t *written);
/** All or nothing; `len` 0 only asks for the space available. */
enum MvStatus mvWriteChannel(MvChannelHandle handle, const uint8_t *data, uint32_t len,
                             uint32_t *available);
/** Closes the channel and writes 0 to *handle, also when it was already closed or invalid
 *  (then MV_STATUS_INVALIDHANDLE). */
enum MvStatus mvCloseChannel(MvChannelHandle *handle);
enum MvStatus mvGetChannelClosureReason(MvChannelHandle handle, enum MvClosureReason *reason_out);

/* ---------------------------------------------------------------------------------------- */
/* HTTP (channel type HTTP: one request per channel)                                        */
/* ---------------------------------------------------------------------------------------- */

struct MvHttpHeader {
    uint32_t length;
    const uint8_t *data; /**< "Name: value" */
};

struct MvHttpRequest {
    struct MvSizedString method; /**< GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS */
    struct MvSizedString url;    /**< https://... */
    uint32_t num_headers;        /**< at most 32 */
    const struct MvHttpHeader *headers;
    struct MvSizedString body;
    uint32_t timeout_ms; /**< compat: Keel's server accepts 1000..60000 */
};

enum MvHttpResult {
    MV_HTTPRESULT_OK = 0,
    MV_HTTPRESULT_UNSUPPORTEDURISCHEME = 1,
    MV_HTTPRESULT_UNSUPPORTEDMETHOD = 2,
    MV_HTTPRESULT_INVALIDHEADERS = 3,
    MV_HTTPRESULT_INVALIDTIMEOUT = 4,
    MV_HTTPRESULT_REQUESTFAILED = 5, /**< compat: also denied, timed out, rate limited */
    MV_HTTPRESULT_RESPONSETOOLARGE = 6
};

struct MvHttpResponseData {
    enum MvHttpResult result;
    uint32_t status_code;
    uint32_t num_headers;
    uint32_t body_length;
};

/** Errors: PARAMETERFAULT, INVALIDHANDLE (not an HTTP channel), INVALIDBUFFERSIZE (does not fit
 *  the send buffer), TOOMANYELEMENTS (> 32 headers), CHANNELCLOSED, REQUESTALREADYSENT. */
enum MvStatus mvSendHttpRequest(MvChannelHandle handle, const struct MvHttpRequest *request);
/** RESPONSENOTPRESENT until the response arrived (CHANNELDATAREADABLE). */
enum MvStatus mvReadHttpResponseData(MvChannelHandle handle, struct MvHttpResponseData *response_data);
/** Copies header `header_index` ("Name: value"); a NUL follows it if `size` leaves room.
 *  INDEXINVALID past the last header; INVALIDBUFFERSIZE if it does not fit. */
enum MvStatus mvReadHttpResponseHeader(MvChannelHandle handle, uint32_t header_index, uint8_t *buf,
                                       uint32_t size);
/** Copies min(size, body_length - offset) body bytes from `offset`; OFFSETINVALID if offset >
 *  body_length. */
enum MvStatus mvReadHttpResponseBody(MvChannelHandle handle, uint32_t offset, uint8_t *buf,
                                     uint32_t size);

/* ---------------------------------------------------------------------------------------- */
/* Configuration and secrets (channel type CONFIGFETCH: one fetch per channel)              */
/* ---------------------------------------------------------------------------------------- */

enum MvConfigKeyFetchScope { MV_CONFIGKEYFETCHSCOPE_ACCOUNT = 0, MV_CONFIGKEYFETCHSCOPE_DEVICE = 1 };
enum MvConfigKeyFetchStore { MV_CONFIGKEYFETCHSTORE_SECRET = 0, MV_CONFIGKEYFETCHSTORE_CONFIG = 1 };

struct MvConfigKeyToFetch {
    enum MvConfigKeyFetchScope scope;
    enum MvConfigKeyFetchStore store;
    struct MvSizedString key;
};

struct MvConfigKeyFetchParams {
    uint32_t num_items; /**< at most 16 (compat: Keel's limit) */
    const struct MvConfigKeyToFetch *keys_to_fetch;
};

enum MvConfigFetchResult {
    MV_CONFIGFETCHRESULT_OK = 0,
    MV_CONFIGFETCHRESULT_RESPONSETOOLARGE = 1,
    MV_CONFIGFETCHRESULT_BADREQUEST = 2,  /**< compat: Keel's server refused the request */
    MV_CONFIGFETCHRESULT_TOOMANYKEYS = 3  /**< compat */
};

struct MvConfigResponseData {
    enum MvConfigFetchResult result;
    uint32_t num_items;
};

enum MvConfigKeyFetchResult {
    MV_CONFIGKEYFETCHRESULT_OK = 0,
    MV_CONFIGKEYFETCHRESULT_KEYNOTFOUND = 1,
    MV_CONFIGKEYFETCHRESULT_SERVERERROR = 2,
    MV_CONFIGKEYFETCHRESULT_INVALIDKEY = 3 /**< compat: the server refused the key's syntax */
};

struct MvConfigResponseReadItemParams {
    uint32_t item_index;
    enum MvConfigKeyFetchResult *result;
    struct MvSizedStringBuffer buf;
};

/** Errors: PARAMETERFAULT, INVALIDHANDLE, INVALIDBUFFERSIZE, CHANNELCLOSED,
 *  REQUESTALREADYSENT, TOOMANYCONFIGKEYS, UNKNOWNCONFIGSCOPE, UNKNOWNCONFIGSTORE,
 *  INVALIDCONFIGKEY (empty or not printable ASCII). */
enum MvStatus mvSendConfigFetchRequest(MvChannelHandle handle, const struct MvConfigKeyFetchParams *request);
enum MvStatus mvReadConfigFetchResponseData(MvChannelHandle handle, struct MvConfigResponseData *response_data);
/** Copies item `item_index`'s value into params->buf (INVALIDBUFFERSIZE if it does not fit;
 *  *length is the full length either way); INDEXINVALID past the last item. */
enum MvStatus mvReadConfigResponseItem(MvChannelHandle handle, const struct MvConfigResponseReadItemParams *params);

/* ---------------------------------------------------------------------------------------- */
/* Managed MQTT (channel type MQTT)                                                         */
/* ---------------------------------------------------------------------------------------- */

enum MvMqttProtocolVersion { MV_MQTTPROTOCOLVERSION_V3_1_1 = 0, MV_MQTTPROTOCOLVERSION_V5 = 1 };
enum MvMqttAuthenticationMethod {
    MV_MQTTAUTHENTICATIONMETHOD_NONE = 0,
    MV_MQTTAUTHENTICATIONMETHOD_USERNAMEPASSWORD = 1
};

struct MvUsernamePassword {
    struct MvSizedString username;
    struct MvSizedString password;
};

/* compat: layouts of the authentication and TLS structs are this header's own. On Keel the
 * broker, its credentials and TLS settings are the server's broker profile: these fields are
 * accepted and ignored. */
struct MvMqttAuthentication {
    enum MvMqttAuthenticationMethod method;
    union {
        struct MvUsernamePassword username_password;
    };
};

struct MvTlsCertificateChain {
    uint32_t num_certs;
    const struct MvSizedString *certs;
};

struct MvOwnTlsCertificateChain {
    struct MvTlsCertificateChain chain;
    struct MvSizedString key;
};

struct MvTlsCredentials {
    struct MvTlsCertificateChain cacert;
    struct MvOwnTlsCertificateChain clientcert;
};

struct MvMqttWill {
    struct MvSizedString topic;
    struct MvSizedString payload;
    uint32_t qos;
    uint8_t retain;
};

struct MvMqttConnectRequest {
    enum MvMqttProtocolVersion protocol_version; /**< compat: ignored (profile) */
    struct MvSizedString host;                   /**< compat: ignored (profile) */
    uint16_t port;                               /**< compat: ignored (profile) */
    struct MvSizedString clientid;               /**< compat: ignored (profile) */
    struct MvMqttAuthentication authentication;  /**< compat: ignored (profile) */
    const struct MvTlsCredentials *tls_credentials; /**< compat: ignored (profile) */
    uint32_t keepalive;                          /**< seconds (at most 65535) */
    uint8_t clean_start;
    const struct MvMqttWill *will;               /**< NULL: none */
};

enum MvMqttReadableDataType {
    MV_MQTTREADABLEDATATYPE_NONE = 0,
    MV_MQTTREADABLEDATATYPE_MESSAGERECEIVED = 1,
    MV_MQTTREADABLEDATATYPE_MESSAGELOST = 2,
    MV_MQTTREADABLEDATATYPE_CONNECTRESPONSE = 3,
    MV_MQTTREADABLEDATATYPE_SUBSCRIBERESPONSE = 4,
    MV_MQTTREADABLEDATATYPE_UNSUBSCRIBERESPONSE = 5,
    MV_MQTTREADABLEDATATYPE_PUBLISHRESPONSE = 6,
    MV_MQTTREADABLEDATATYPE_DISCONNECTRESPONSE = 7
};

enum MvMqttRequestState {
    MV_MQTTREQUESTSTATE_REQUESTCOMPLETED = 0,
    MV_MQTTREQUESTSTATE_INVALIDPARAMETERS = 1,
    MV_MQTTREQUESTSTATE_ALREADYCONNECTED = 2,
    MV_MQTTREQUESTSTATE_NOTCONNECTED = 3,
    MV_MQTTREQUESTSTATE_NXDOMAIN = 4,
    MV_MQTTREQUESTSTATE_UNKNOWNCA = 5,
    MV_MQTTREQUESTSTATE_CERTIFICATEEXPIRED = 6,
    MV_MQTTREQUESTSTATE_SOCKETERROR = 7,
    MV_MQTTREQUESTSTATE_CONNECTIONCIRCUITBREAKER = 8,
    MV_MQTTREQUESTSTATE_DENIED = 9 /**< compat: the broker profile is missing or denied */
};

/* compat: values are this header's own (the documentation names only the first). */
enum MvMqttLostMessageReason {
    MV_MQTTLOSTMESSAGEREASON_DEVICERECEIVEBUFFERTOOSMALL = 0,
    MV_MQTTLOSTMESSAGEREASON_RATELIMITED = 1,
    MV_MQTTLOSTMESSAGEREASON_SESSIONQUEUEOVERFLOW = 2
};

struct MvMqttSubscription {
    struct MvSizedString topic;
    uint32_t desired_qos;
    uint32_t nl, rap, rh; /**< MQTT v5 options; compat: ignored */
};

struct MvMqttSubscribeRequest {
    uint32_t correlation_id;
    const struct MvMqttSubscription *subscriptions;
    uint32_t num_subscriptions; /**< at most 8 */
};

struct MvMqttSubscribeResponse {
    enum MvMqttRequestState *request_state;
    uint32_t *correlation_id;
    uint32_t *reason_codes;
    uint32_t reason_codes_size;
    uint32_t *reason_codes_len;
};

struct MvMqttUnsubscribeRequest {
    uint32_t correlation_id;
    const struct MvSizedString *topics;
    uint32_t num_topics; /**< at most 8 */
};

/* compat: layout as MvMqttSubscribeResponse's first two fields. */
struct MvMqttUnsubscribeResponse {
    enum MvMqttRequestState *request_state;
    uint32_t *correlation_id;
};

struct MvMqttPublishRequest {
    uint32_t correlation_id;
    struct MvSizedString topic;
    struct MvSizedString payload;
    uint32_t desired_qos; /**< 0 or 1 */
    uint32_t retain;
};

struct MvMqttPublishResponse {
    enum MvMqttRequestState request_state;
    uint32_t correlation_id;
    uint32_t reason_code;
};

struct MvMqttMessage {
    uint32_t *correlation_id; /**< acknowledge QoS 1 messages with it */
    struct MvSizedStringBuffer topic;
    struct MvSizedStringBuffer payload;
    uint32_t *qos;
    uint8_t *retain;
};

struct MvMqttLostMessageInfo {
    enum MvMqttLostMessageReason *reason;
    struct MvSizedStringBuffer topic;
    uint32_t *message_len;
};

struct MvMqttConnectResponse {
    enum MvMqttRequestState request_state;
    uint32_t reason_code;
};

struct MvMqttDisconnectResponse {
    enum MvMqttRequestState request_state;
    uint32_t disconnect_code;
};

/** What the oldest unread message of the channel is (NONE if none). Messages of Keel's own
 *  (session status, errors) are consumed here, silently. */
enum MvStatus mvMqttGetNextReadableDataType(MvChannelHandle handle, enum MvMqttReadableDataType *data_type);
enum MvStatus mvMqttRequestConnect(MvChannelHandle handle, const struct MvMqttConnectRequest *request);
enum MvStatus mvMqttReadConnectResponse(MvChannelHandle handle, struct MvMqttConnectResponse *response_data);
enum MvStatus mvMqttRequestSubscribe(MvChannelHandle handle, const struct MvMqttSubscribeRequest *request);
enum MvStatus mvMqttReadSubscribeResponse(MvChannelHandle handle, const struct MvMqttSubscribeResponse *response_data);
enum MvStatus mvMqttRequestUnsubscribe(MvChannelHandle handle, const struct MvMqttUnsubscribeRequest *request);
enum MvStatus mvMqttReadUnsubscribeResponse(MvChannelHandle handle, const struct MvMqttUnsubscribeResponse *response_data);
enum MvStatus mvMqttRequestPublish(MvChannelHandle handle, const struct MvMqttPublishRequest *request);
enum MvStatus mvMqttReadPublishResponse(MvChannelHandle handle, struct MvMqttPublishResponse *response_data);
/** Copies the message's topic and payload (INVALIDBUFFERSIZE if one does not fit: what fits is
 *  copied, *length is the full length, and the message is consumed all the same). */
enum MvStatus mvMqttReceiveMessage(MvChannelHandle handle, const struct MvMqttMessage *message_data);
enum MvStatus mvMqttReceiveLostMessageInfo(MvChannelHandle handle, const struct MvMqttLostMessageInfo *lost_message_info);
enum MvStatus mvMqttAcknowledgeMessage(MvChannelHandle handle, uint32_t correlation_id);
enum MvStatus mvMqttRequestDisconnect(MvChannelHandle handle);
enum MvStatus mvMqttReadDisconnectResponse(MvChannelHandle handle, struct MvMqttDisconnectResponse *response_data);

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/** compat: Keel logs without an app buffer; the buffer is only checked (non-NULL, 4-aligned). */
enum MvStatus mvServerLoggingInit(uint8_t *buffer, uint32_t length_bytes);
/** One log line (compat: at most 512 bytes, Keel's limit: LOGMESSAGETOOLONG beyond).
 *  UNAVAILABLE before mvServerLoggingInit(). */
enum MvStatus mvServerLog(const uint8_t *message, uint16_t length_bytes);

/* ---------------------------------------------------------------------------------------- */
/* Restart, updates, power                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum MvRestartMode { MV_RESTARTMODE_AUTOAPPLYUPDATE = 0 };

/** Applies a downloaded update if one is ready (the new version starts on trial), else
 *  restarts the app. Does not return on success. UNAVAILABLE from an interrupt. */
enum MvStatus mvRestart(enum MvRestartMode mode);

enum MvPowerSavingMode {
    MV_POWERSAVINGMODE_SLEEP = 0,
    MV_POWERSAVINGMODE_STOP0 = 1,
    MV_POWERSAVINGMODE_STOP1 = 2,
    MV_POWERSAVINGMODE_STOP2 = 3,
    MV_POWERSAVINGMODE_STOP3 = 4
};
enum MvDeepSleepMode { MV_DEEPSLEEPMODE_STANDBY = 0, MV_DEEPSLEEPMODE_SHUTDOWN = 1 };

enum MvWakeReason {
    MV_WAKEREASON_COLDBOOT = 0,
    MV_WAKEREASON_REMOTEMICROVISORRESTART = 1,
    MV_WAKEREASON_REMOTEAPPLICATIONRESTART = 2,
    MV_WAKEREASON_DEBUGGERRESTART = 3,
    MV_WAKEREASON_MICROVISORCRASH = 4,
    MV_WAKEREASON_MICROVISORWATCHDOG = 5,
    MV_WAKEREASON_MICROVISOROUTOFMEMORY = 6,
    MV_WAKEREASON_MICROVISORERROR = 7,
    MV_WAKEREASON_APPLICATIONCRASH = 8,
    MV_WAKEREASON_APPLICATIONUPDATE = 9,
    MV_WAKEREASON_MICROVISORUPDATE = 10,
    MV_WAKEREASON_OPTIONBYTES = 11,
    MV_WAKEREASON_DEEPSLEEPCHECKIN = 12,
    MV_WAKEREASON_DEEPSLEEPAPPLICATION = 13,
    MV_WAKEREASON_DEEPSLEEPMODEM = 14,
    MV_WAKEREASON_DEEPSLEEPAPPLICATIONRTC = 15,
    MV_WAKEREASON_DEEPSLEEPOTHER = 16
};

/** compat: not supported (the visor keeps the link up): MV_STATUS_MICROVISORBUSY; from an
 *  interrupt MV_STATUS_UNAVAILABLE. */
enum MvStatus mvPowerSave(enum MvPowerSavingMode mode);
enum MvStatus mvDeepSleep(enum MvDeepSleepMode mode);
/** compat: no system LED: accepted and ignored. */
enum MvStatus mvSystemLedEnable(uint32_t enable);
/** From keel_boot_info()/keel_update_info(): cold boot, application crash (crash or watchdog),
 *  application update (running on trial), or remote application restart (any other restart). */
enum MvStatus mvGetWakeReason(enum MvWakeReason *reason);

/* ---------------------------------------------------------------------------------------- */
/* Fast interrupts                                                                          */
/* ---------------------------------------------------------------------------------------- */

/** compat: not supported: MV_STATUS_UNAVAILABLE (every Keel call is short and masks the app's
 *  interrupts only for its duration, so there is no slower kind of interrupt to opt out of). */
enum MvStatus mvSetFastInterrupt(uint32_t irqn);
enum MvStatus mvClearFastInterrupt(uint32_t irqn);
enum MvStatus mvEnableFastInterrupt(uint32_t irqn);
enum MvStatus mvDisableFastInterrupt(uint32_t irqn);
enum MvStatus mvDisableAllFastInterrupts(void);
enum MvStatus mvEnableAllFastInterrupts(void);

#ifdef __cplusplus
}
#endif

#endif /* MV_SYSCALLS_H */
