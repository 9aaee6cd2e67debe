/*
 * keel.h - C SDK for Keel apps (non-secure world of an Arm Cortex-M33 with TrustZone).
 *
 * This header is the complete C reference of the Keel system-call ABI. It mirrors
 * crates/keel-abi/src/lib.rs exactly (names, numeric values, struct layouts); the Rust
 * file is the source of truth and a test checks that the two agree.
 *
 * Calling convention
 * ------------------
 *  - Every call is a branch to a fixed slot in the visor's non-secure-callable (NSC)
 *    region: address = KEEL_NSC_BASE + KEEL_SLOT_SIZE * slot, Thumb bit set. Slots never
 *    move between visor versions; reserved slots (6, 11..15, 27..31 and 35..63) answer
 *    KEEL_STATUS_NOT_IMPLEMENTED (so does a call that is newer than the running visor).
 *  - Up to four 32-bit arguments in r0..r3 (normal AAPCS); the result is a keel_status_t in
 *    r0, except keel_monotonic_us(), which cannot fail and returns a uint64_t in r0:r1.
 *    Other calls that produce data write it through a pointer argument.
 *  - Every pointer is checked by the visor for non-secure access over its whole length
 *    before use. A pointer the app may not use yields KEEL_STATUS_PARAMETER_FAULT, never a
 *    fault.
 *  - Structs that may grow carry a `version` field the caller sets (1 for every struct of
 *    ABI 2.1); an unknown version yields KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION.
 *  - Calls may be made from thread mode or from the app's interrupt handlers, except
 *    keel_restart() and keel_update_apply(), which answer KEEL_STATUS_UNAVAILABLE from a
 *    handler.
 *  - Make every call with the app's interrupts masked (PRIMASK): the functions below do
 *    (save PRIMASK, cpsid i, call, restore). The visor masks every app exception for the call's
 *    body itself, which keeps the visor safe from any caller; the caller's mask closes the
 *    instructions on the way in and out, so no app interrupt or RTOS task switch ever lands
 *    inside a call (one that did could resume another task's secure frame).
 *  - No call blocks, and no app exception preempts a call: the visor masks every non-secure
 *    exception for the duration of a call. Calls are therefore atomic to the app's interrupt
 *    handlers and to the tasks of any RTOS (a task switch never lands inside a call), and
 *    need no lock. Waiting happens in the app: the visor reports events as records in a
 *    notification ring in app memory and pends an interrupt line the app chose (see
 *    keel_notify_setup()); the app sleeps with WFI.
 *  - KEEL_STATUS_INTERNAL_ERROR means the visor hit an unexpected internal error and the
 *    call had no effect; it is not listed again for each call below.
 *
 * The header needs only the freestanding headers <stdint.h> and <stddef.h>; it does not use
 * libc. All functions are `static inline`.
 */
#ifndef KEEL_H
#define KEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define KEEL__STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define KEEL__STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ---------------------------------------------------------------------------------------- */
/* Constants                                                                                */
/* ---------------------------------------------------------------------------------------- */

/** ABI major version: bumped only for incompatible changes (2: keel_sleep_us() replaced by
 *  notification rings, keel_monotonic_us() returns its value, calls mask app exceptions). */
#define KEEL_ABI_MAJOR 2
/** ABI minor version: bumped when calls or struct versions are added. */
#define KEEL_ABI_MINOR 1

/** Size in bytes of one NSC veneer slot. */
#define KEEL_SLOT_SIZE 16u
/** Number of slots in the NSC table (used + reserved). */
#define KEEL_SLOT_COUNT 64u

/** Maximum length of one log message in bytes. */
#define KEEL_LOG_MAX_LEN 512u
/** Length of the ASCII device id written by keel_device_id() ("kd" + 32 lowercase hex
 *  digits). It is NOT NUL terminated: use a buffer of KEEL_DEVICE_ID_LEN + 1 bytes to make
 *  a C string of it. */
#define KEEL_DEVICE_ID_LEN 34u
/** Shortest watchdog timeout an app may ask for, in milliseconds. */
#define KEEL_WATCHDOG_MIN_MS 10u
/** Longest watchdog timeout an app may ask for, in milliseconds (one hour). */
#define KEEL_WATCHDOG_MAX_MS 3600000u

/** Number of stack words copied into a keel_crash_report_t. */
#define KEEL_CRASH_STACK_WORDS 8

/**
 * Base address of the visor's NSC slot table.
 *
 * This is a BOARD constant, not part of the ABI: 0x10070000 is the value for the
 * mps2-an505 (Cortex-M33) board. Define KEEL_NSC_BASE before including this header (or with
 * -DKEEL_NSC_BASE=...) when building for another board.
 */
#ifndef KEEL_NSC_BASE
#define KEEL_NSC_BASE 0x10070000u
#endif

/* ---------------------------------------------------------------------------------------- */
/* Status codes                                                                             */
/* ---------------------------------------------------------------------------------------- */

/**
 * Result of every system call (r0). Values are stable; new ones are only ever appended.
 * Functions return keel_status_t (a uint32_t) so that the type is exactly 32 bits wide.
 */
enum keel_status {
    /** Success. */
    KEEL_STATUS_OK = 0,
    /** The wall clock has not been set yet (it is set by the server once the device is
     *  online). */
    KEEL_STATUS_TIME_NOT_SET = 1,
    /** A pointer argument is not entirely inside memory the app may access. */
    KEEL_STATUS_PARAMETER_FAULT = 2,
    /** A buffer is too small (or too large) for the call. */
    KEEL_STATUS_INVALID_BUFFER_SIZE = 3,
    /** A non-pointer argument is out of range. */
    KEEL_STATUS_INVALID_ARGUMENT = 4,
    /** The `version` field of a struct is not supported by this visor. */
    KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION = 5,
    /** The slot is reserved for a future call. */
    KEEL_STATUS_NOT_IMPLEMENTED = 6,
    /** The call cannot be made in the current state (e.g. from an interrupt handler). */
    KEEL_STATUS_UNAVAILABLE = 7,
    /** A log message exceeds KEEL_LOG_MAX_LEN. */
    KEEL_STATUS_LOG_MESSAGE_TOO_LONG = 8,
    /** The visor hit an unexpected internal error; the call had no effect. */
    KEEL_STATUS_INTERNAL_ERROR = 9,
    /** The handle names no open channel (never opened, closed, or from an earlier app start).
     *  Since ABI 2.1. */
    KEEL_STATUS_INVALID_HANDLE = 10,
    /** Every channel slot is in use (KEEL_CHAN_MAX_CHANNELS). Since ABI 2.1. */
    KEEL_STATUS_TOO_MANY_CHANNELS = 11,
    /** The channel was closed by the server or the link (see keel_chan_info_t.reason); close
     *  it. Since ABI 2.1. */
    KEEL_STATUS_CHANNEL_CLOSED = 12,
    /** Not now: the transmit buffer has no room for the message yet. Retry after a
     *  KEEL_NOTIFY_CHANNEL_WRITABLE record (or later). Since ABI 2.1. */
    KEEL_STATUS_WOULD_BLOCK = 13,
    /** The device is not connected to the server. Since ABI 2.1. */
    KEEL_STATUS_NETWORK_NOT_CONNECTED = 14,
    /** Too many requests in a short time; retry later. Since ABI 2.1. */
    KEEL_STATUS_RATE_LIMITED = 15,
    /** A buffer is not aligned as the call requires (KEEL_CHAN_BUFFER_ALIGN). Since ABI 2.1. */
    KEEL_STATUS_INVALID_BUFFER_ALIGNMENT = 16,
    /** The channel kind is not a KEEL_CHAN_KIND_* value. Since ABI 2.1. */
    KEEL_STATUS_UNKNOWN_CHANNEL_KIND = 17,
    /** A buffer overlaps another channel's buffer or the notification ring. Since ABI 2.1. */
    KEEL_STATUS_BUFFER_IN_USE = 18,
    /** Nothing to read: no complete message waits on the channel. Since ABI 2.1. */
    KEEL_STATUS_NO_DATA = 19
};

/** Type of every system-call result: one of enum keel_status, always 32 bits. */
typedef uint32_t keel_status_t;

/* ---------------------------------------------------------------------------------------- */
/* Call slots                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* Slot numbers of the system calls. Slots 0..10 are the base calls (ABI 1.0; 6 is retired);
 * 32..34 the update calls (since ABI 1.1); 16 and 17 notifications (ABI 2.0); 18..26 network
 * and channels (since ABI 2.1). The other slots are reserved: 11..15 for further core calls,
 * 27..31 for networking and channels, 35..39 for update control, 40..47 for configuration and
 * secrets, 48..55 for debugging, the rest for later use. */
#define KEEL_CALL_ABI_INFO 0
#define KEEL_CALL_DEVICE_ID 1
#define KEEL_CALL_MONOTONIC_US 2
#define KEEL_CALL_WALL_TIME_US 3
#define KEEL_CALL_LOG 4
#define KEEL_CALL_RESTART 5
#define KEEL_CALL_WATCHDOG_START 7
#define KEEL_CALL_WATCHDOG_KICK 8
#define KEEL_CALL_BOOT_INFO 9
#define KEEL_CALL_LAST_CRASH 10
#define KEEL_CALL_NOTIFY_SETUP 16
#define KEEL_CALL_TIMER_SET 17
/** Since ABI 2.1. */
#define KEEL_CALL_NET_REQUEST 18
/** Since ABI 2.1. */
#define KEEL_CALL_NET_RELEASE 19
/** Since ABI 2.1. */
#define KEEL_CALL_NET_STATUS 20
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_OPEN 21
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_SEND 22
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_RECV 23
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_CONSUME 24
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_CLOSE 25
/** Since ABI 2.1. */
#define KEEL_CALL_CHAN_INFO 26
/** Since ABI 1.1. */
#define KEEL_CALL_UPDATE_CONFIRM 32
/** Since ABI 1.1. */
#define KEEL_CALL_UPDATE_INFO 33
#define KEEL_CALL_UPDATE_APPLY 34

/* ---------------------------------------------------------------------------------------- */
/* Enumerations carried as uint32_t                                                         */
/* ---------------------------------------------------------------------------------------- */

/* Log levels (keel_log() `level`). Console tags: E, W, I, D. */
#define KEEL_LOG_ERROR 0
#define KEEL_LOG_WARN 1
#define KEEL_LOG_INFO 2
#define KEEL_LOG_DEBUG 3

/* Why the app is running now (keel_boot_info_t.reason). */
/** First start after the device powered on or reset. */
#define KEEL_START_COLD_BOOT 0
/** The app crashed (fault) and was restarted. */
#define KEEL_START_CRASH 1
/** The app stopped kicking its watchdog and was restarted. */
#define KEEL_START_WATCHDOG 2
/** The app asked for a restart (keel_restart()). */
#define KEEL_START_REQUESTED 3

/* What kind of fault (or policy event) ended the app (keel_crash_report_t.kind). */
/** HardFault (including escalated faults and `bkpt` without a debugger). */
#define KEEL_FAULT_HARDFAULT 3
/** MemManage fault. */
#define KEEL_FAULT_MEMMANAGE 4
/** BusFault (e.g. an access blocked by a peripheral or memory protection controller). */
#define KEEL_FAULT_BUSFAULT 5
/** UsageFault (undefined instruction, stack overflow via MSPLIM, division by zero, ...). */
#define KEEL_FAULT_USAGEFAULT 6
/** SecureFault: the app touched secure memory or entered secure code other than via a
 *  slot. */
#define KEEL_FAULT_SECUREFAULT 7
/** The watchdog expired. */
#define KEEL_FAULT_WATCHDOG 0x100
/** The system reset while the app ran, and nothing explains it (the app provoked it, or power
 *  was lost with RAM kept): counted as a crash of the app, so a reset loop backs off and ends in
 *  quarantine. */
#define KEEL_FAULT_RESET 0x101

/* How the last update ended (keel_update_info_t.last_outcome). Since ABI 1.1. */
/** No update ended since the factory image. */
#define KEEL_UPDATE_OUTCOME_NONE 0
/** Installed and confirmed (by the app, or by the visor's policy). */
#define KEEL_UPDATE_OUTCOME_CONFIRMED 1
/** Installed, then rolled back to the previous app (see last_reason). */
#define KEEL_UPDATE_OUTCOME_ROLLED_BACK 2
/** Refused before anything was written (e.g. a sequence number not above the installed
 *  one). */
#define KEEL_UPDATE_OUTCOME_REFUSED 3
/** Failed while downloading or installing; the running app was not changed. */
#define KEEL_UPDATE_OUTCOME_FAILED 4

/* Why the last update was rolled back, refused or failed (keel_update_info_t.last_reason;
 * 0 when there is no reason, e.g. for KEEL_UPDATE_OUTCOME_CONFIRMED). Since ABI 1.1. New codes
 * may be appended: treat an unknown one as "other". The list is keel_abi::UpdateReason (shared
 * with the update journal and the wire protocol); host/keel-vdev/tests/c_header.rs checks it. */
/** Rolled back: the trial app crashed too often (the bundle's max_trial_crashes). */
#define KEEL_UPDATE_REASON_CRASH_LOOP 1
/** Rolled back: the trial app hung (watchdog kills) too often. */
#define KEEL_UPDATE_REASON_WATCHDOG 2
/** Rolled back: the grace time passed without keel_update_confirm(). */
#define KEEL_UPDATE_REASON_NOT_CONFIRMED 3
/** Rolled back: the grace time passed without the cloud link staying up. */
#define KEEL_UPDATE_REASON_NO_LINK 4
/** Rolled back: the device reset too often while the trial ran. */
#define KEEL_UPDATE_REASON_TRIAL_RESETS 5
/** Rolled back: the trial slot did not hold a valid app image at boot. */
#define KEEL_UPDATE_REASON_TRIAL_IMAGE_INVALID 6
/** Refused: the sequence number is not above the installed one (anti-rollback). */
#define KEEL_UPDATE_REASON_SEQUENCE_NOT_NEWER 7
/** Refused: the app image does not fit the slot. */
#define KEEL_UPDATE_REASON_TOO_LARGE 8
/** Failed: the downloaded image does not match the manifest's digest. */
#define KEEL_UPDATE_REASON_DIGEST_MISMATCH 9
/** Failed: the download is not a valid app image for this device. */
#define KEEL_UPDATE_REASON_BAD_IMAGE 10
/** Failed: the download was abandoned (deployment withdrawn or replaced). */
#define KEEL_UPDATE_REASON_CANCELLED 11
/** Refused: a trial was running. */
#define KEEL_UPDATE_REASON_BUSY 12
/** Failed: flash error while installing. */
#define KEEL_UPDATE_REASON_FLASH 13
/** Refused: the manifest is malformed, not signed by a trusted key, or has no app layer. */
#define KEEL_UPDATE_REASON_BAD_MANIFEST 14
/** Refused: the bundle needs a newer visor. */
#define KEEL_UPDATE_REASON_VISOR_TOO_OLD 15
/** Failed: the server could not serve the layer. */
#define KEEL_UPDATE_REASON_LAYER_UNAVAILABLE 16
/** Rolled back: under confirm-by-link the trial app gave no sign of life (no log line, watchdog
 *  kick, update_info, notify_setup or timer_set) in the last 10 s of its grace time, or had not
 *  run half of it. */
#define KEEL_UPDATE_REASON_NO_SIGN_OF_LIFE 17

/* Event bits of keel_sleep_us() (the SDK's blocking wait, built on notifications). */
/** No event: the time is up. */
#define KEEL_EVENT_NONE 0
/** An update is downloaded and verified; call keel_update_apply() when convenient (the visor
 *  applies it anyway when the bundle's politeness time is over). */
#define KEEL_EVENT_UPDATE_READY 1u

/* Notification rings (see keel_notify_setup()). Layout, little endian, 4-aligned:
 *   +0 head (visor: records written, free running)  +4 tail (app: records consumed)
 *   +8 capacity (visor, at setup)                   +12 reserved
 *   +16 + 16 * (i % capacity): record i
 * The ring is full when head - tail >= capacity. A record that finds it full is lost and
 * counted; a KEEL_NOTIFY_OVERRUN record with the count comes before the next one that fits. */
/** Bytes before the first record. */
#define KEEL_NOTIFY_HEADER_LEN 16u
/** Bytes per record. */
#define KEEL_NOTIFY_RECORD_LEN 16u
/** Fewest records a ring may have (a power of two). */
#define KEEL_NOTIFY_MIN_RECORDS 2u
/** Most records a ring may have (a power of two). */
#define KEEL_NOTIFY_MAX_RECORDS 256u
/** First and last interrupt line an app may choose on mps2-an505. */
#define KEEL_NOTIFY_IRQ_FIRST 80u
#define KEEL_NOTIFY_IRQ_LAST 91u
/** The line the SDK uses by default (its handler is KEEL_NOTIFY_IRQ_HANDLER). */
#define KEEL_NOTIFY_DEFAULT_IRQ 80u
/** Record kinds. */
/** An update is ready (value 0). */
#define KEEL_NOTIFY_UPDATE_READY 1u
/** The app's timer expired (tag as set, value = monotonic µs when it fired). */
#define KEEL_NOTIFY_TIMER 2u
/** Records were lost because the ring was full (value = how many). */
#define KEEL_NOTIFY_OVERRUN 3u
/** The link's state changed (and once at once after keel_net_request()). tag = the request's
 *  tag; value = state in bits 0..8 (KEEL_NET_STATE_*), offline reason in bits 8..16
 *  (KEEL_NET_OFFLINE_*), wanted-by bits (KEEL_NET_WANTED_*) in bits 32..64: see
 *  KEEL_NOTIFY_NET_STATE() and friends. Since ABI 2.1. */
#define KEEL_NOTIFY_NET_STATUS 4u
/** A complete message waits on a channel (keel_chan_recv()); one record per message. tag = the
 *  channel's tag; value = its handle in bits 0..32 and, in bits 32..64, the low 32 bits of the
 *  monotonic time (us) at which the visor wrote the record (KEEL_NOTIFY_CHAN_TIME()). Since ABI
 *  2.1. */
#define KEEL_NOTIFY_CHANNEL_READABLE 5u
/** Room came free in a channel's transmit buffer after keel_chan_send() answered
 *  KEEL_STATUS_WOULD_BLOCK. MQTT channels only: HTTP and config channels carry one request
 *  and never report it. tag, value: as KEEL_NOTIFY_CHANNEL_READABLE. Since ABI 2.1. */
#define KEEL_NOTIFY_CHANNEL_WRITABLE 6u
/** The server or the link closed a channel. tag = the channel's tag; value = the handle in
 *  bits 0..32, the KEEL_CHAN_REASON_* in bits 32..40. Since ABI 2.1. */
#define KEEL_NOTIFY_CHANNEL_CLOSED 7u

/** Fields of a KEEL_NOTIFY_NET_STATUS record's value. */
#define KEEL_NOTIFY_NET_STATE(value) ((uint32_t)((value) & 0xFFu))
#define KEEL_NOTIFY_NET_OFFLINE(value) ((uint32_t)(((value) >> 8) & 0xFFu))
#define KEEL_NOTIFY_NET_WANTED_BY(value) ((uint32_t)((uint64_t)(value) >> 32))
/** Fields of a KEEL_NOTIFY_CHANNEL_* record's value. */
#define KEEL_NOTIFY_CHAN_HANDLE(value) ((uint32_t)((value) & 0xFFFFFFFFu))
#define KEEL_NOTIFY_CHAN_REASON(value) ((uint32_t)(((uint64_t)(value) >> 32) & 0xFFu))
/** When the visor wrote a READABLE or WRITABLE record (low 32 bits of keel_monotonic_us()). */
#define KEEL_NOTIFY_CHAN_TIME(value) ((uint32_t)((uint64_t)(value) >> 32))

/* Network control and channels (since ABI 2.1). The app never touches the network: it asks for
 * it (keel_net_request()) and opens channels to services of the Keel server (an HTTP(S) proxy,
 * a managed MQTT session, configuration and secrets) with its own receive and transmit buffers.
 *
 * Buffers hold message records: u32 length (LE), the message bytes, zero padding to a multiple
 * of 4 (KEEL_CHAN_RECORD_COST(len) bytes). Both are linear: records are appended from offset 0,
 * and a buffer starts again at offset 0 once every record in it has been consumed/sent.
 *  - rx: the visor writes every message the server sends; keel_chan_recv() says where the
 *    oldest complete one lies (read it in place), keel_chan_consume() frees it.
 *  - tx: keel_chan_send() copies one whole message into it; the visor sends it as the server's
 *    credit allows. The app must not touch the transmit buffer itself.
 * Rules: both buffers 4-aligned (KEEL_CHAN_BUFFER_ALIGN), lengths multiples of 4 within
 * KEEL_CHAN_MIN_RX (rx) / KEEL_CHAN_MIN_TX (tx) .. KEEL_CHAN_MAX_BUFFER, writable app RAM, not
 * overlapping each other, another open channel's buffers or the notification ring. The largest
 * message a channel can receive is rx_len - 4; send one of at most tx_len - 4 bytes.
 * The messages themselves are defined in keel_chan.h. */
/** Most channels open at once. */
#define KEEL_CHAN_MAX_CHANNELS 8u
/** Most network requests the app may hold at once. */
#define KEEL_NET_MAX_REQUESTS 255u
/** Required alignment of both buffers. */
#define KEEL_CHAN_BUFFER_ALIGN 4u
/** Smallest receive buffer. */
#define KEEL_CHAN_MIN_RX 64u
/** Smallest transmit buffer. */
#define KEEL_CHAN_MIN_TX 64u
/** Largest buffer (either direction). */
#define KEEL_CHAN_MAX_BUFFER 65536u
/** Longest endpoint name. */
#define KEEL_CHAN_MAX_ENDPOINT 64u
/** Bytes of the length word in front of every message record. */
#define KEEL_CHAN_RECORD_HEADER 4u
/** Size in bytes of keel_chan_open_t. */
#define KEEL_CHAN_OPEN_PARAMS_LEN 36u
/** Bytes one message of `len` bytes takes in a buffer (and in credit). */
#define KEEL_CHAN_RECORD_COST(len) (KEEL_CHAN_RECORD_HEADER + (((uint32_t)(len) + 3u) & ~3u))

/* Channel kinds (keel_chan_open_t.kind). */
/** One HTTP(S) request and its response (the server makes the request). */
#define KEEL_CHAN_KIND_HTTP 1u
/** A managed MQTT session: the server holds the broker connection; the endpoint names the
 *  broker profile configured on the server. */
#define KEEL_CHAN_KIND_MQTT 2u
/** One fetch of configuration values and secrets. */
#define KEEL_CHAN_KIND_CONFIG 3u

/* Why a channel is closed (keel_chan_info_t.reason, KEEL_NOTIFY_CHANNEL_CLOSED). */
/** Not closed. */
#define KEEL_CHAN_REASON_NONE 0u
/** The server ended the channel (its service is done or failed; the last message says why). */
#define KEEL_CHAN_REASON_BY_SERVER 1u
/** The server refused to open it (unknown endpoint or kind, the device's channel limit). */
#define KEEL_CHAN_REASON_REFUSED 2u
/** The link to the server dropped (or the server restarted): in-flight requests are lost;
 *  open a new channel once the network is back. */
#define KEEL_CHAN_REASON_LINK_LOST 3u
/** The visor could not write the receive buffer or read the transmit buffer (the app's memory
 *  protection forbids it now, or the app overwrote a record's length word). */
#define KEEL_CHAN_REASON_BUFFER_FAULT 4u
/** The server broke the channel protocol. */
#define KEEL_CHAN_REASON_PROTOCOL_ERROR 5u
/** The app closed it. */
#define KEEL_CHAN_REASON_BY_APP 6u
/** The server's rate limit for this device. */
#define KEEL_CHAN_REASON_RATE_LIMITED 7u

/* A channel's state (keel_chan_info_t.state). */
/** Open locally; the server has not accepted it yet (messages wait in the transmit buffer). */
#define KEEL_CHAN_STATE_OPENING 0u
/** Open at both ends. */
#define KEEL_CHAN_STATE_OPEN 1u
/** Closed by the server or the link (see reason). Messages already received can still be
 *  read; close the handle to free the slot. */
#define KEEL_CHAN_STATE_CLOSED 2u

/* The link's state (keel_net_status_t.state). */
/** Not connected; keel_net_status_t.offline says why. */
#define KEEL_NET_STATE_OFFLINE 0u
/** Connecting (address, TCP, handshake). */
#define KEEL_NET_STATE_CONNECTING 1u
/** Connected to the server: channels can open. */
#define KEEL_NET_STATE_CONNECTED 2u

/* Why the link is down (keel_net_status_t.offline). */
/** It is not down. */
#define KEEL_NET_OFFLINE_NONE 0u
/** No network address yet (no cable, no DHCP answer). */
#define KEEL_NET_OFFLINE_NO_ADDRESS 1u
/** Waiting before the next attempt after a failed one. */
#define KEEL_NET_OFFLINE_BACKOFF 2u
/** The device is not provisioned (no identity): it never connects. */
#define KEEL_NET_OFFLINE_NOT_PROVISIONED 3u

/* Who wants the link (keel_net_status_t.wanted_by bits). */
/** The app holds at least one network request. */
#define KEEL_NET_WANTED_APP 1u
/** The visor's own needs (updates, logs, remote debugging): always, in this version. */
#define KEEL_NET_WANTED_VISOR 2u

/* ---------------------------------------------------------------------------------------- */
/* Structs (layout frozen per version, identical to the Rust #[repr(C)] structs)            */
/* ---------------------------------------------------------------------------------------- */

/** Output of keel_abi_info(). Set `version` to 1 before the call. */
typedef struct keel_abi_info {
    uint32_t version;     /**< Struct version, set by the caller (1). */
    uint16_t abi_major;   /**< KEEL_ABI_MAJOR of the running visor. */
    uint16_t abi_minor;   /**< KEEL_ABI_MINOR of the running visor. */
    uint16_t visor_major; /**< Visor version: major. */
    uint16_t visor_minor; /**< Visor version: minor. */
    uint16_t visor_patch; /**< Visor version: patch. */
    uint16_t reserved;    /**< Reserved, 0. */
} keel_abi_info_t;

/** Output of keel_boot_info(). Set `version` to 1 before the call. */
typedef struct keel_boot_info {
    uint32_t version;          /**< Struct version, set by the caller (1). */
    uint32_t reason;           /**< Why the app is running now (KEEL_START_*). */
    uint32_t restart_count;    /**< Times the app has been (re)started since the visor booted
                                    (0 for the first start). */
    uint32_t crash_count;      /**< How many of those restarts were caused by crashes or the
                                    watchdog. */
    uint32_t restart_code;     /**< The `reason` passed to keel_restart() when `reason` is
                                    KEEL_START_REQUESTED, else 0. */
    uint32_t visor_boot_count; /**< Times the visor itself has booted on this device
                                    (persistent). */
} keel_boot_info_t;

/** Output of keel_last_crash() and the body of the visor's crash log line. Set `version`
 *  to 1 before the call. */
typedef struct keel_crash_report {
    uint32_t version;    /**< Struct version, set by the caller (1). */
    uint32_t kind;       /**< KEEL_FAULT_*. */
    uint64_t time_us;    /**< Monotonic time of the crash in microseconds (offset 8). */
    uint32_t frame[8];   /**< r0, r1, r2, r3, r12, lr, pc, xpsr as stacked by the exception
                              (pc = frame[6] is the faulting instruction for precise faults,
                              lr = frame[5]). */
    uint32_t sp;         /**< The app's stack pointer at the fault (after the exception frame
                              was removed). */
    uint32_t exc_return; /**< EXC_RETURN of the exception that caught the fault. */
    uint32_t cfsr;       /**< Configurable Fault Status Register. */
    uint32_t hfsr;       /**< HardFault Status Register. */
    uint32_t sfsr;       /**< SecureFault Status Register. */
    uint32_t sfar;       /**< SecureFault Address Register (valid if sfsr bit 6 SFARVALID). */
    uint32_t bfar;       /**< BusFault Address Register (valid if cfsr bit 15 BFARVALID). */
    uint32_t mmfar;      /**< MemManage Fault Address Register (valid if cfsr bit 7
                              MMARVALID). */
    uint32_t stack[KEEL_CRASH_STACK_WORDS]; /**< Top of the app's stack at the fault, starting
                                                 at `sp` (0 where unreadable). */
} keel_crash_report_t;

/** Output of keel_update_info(). Set `version` to 1 before the call. Since ABI 1.1. */
typedef struct keel_update_info {
    uint32_t version;            /**< Struct version, set by the caller (1). */
    uint32_t on_trial;           /**< 1 if this app is an update on trial: it should call
                                      keel_update_confirm() once it works (or it is rolled
                                      back, by policy); else 0. */
    uint64_t installed_sequence; /**< Manifest sequence number of the installed (confirmed)
                                      app; 0 for the factory image (offset 8). */
    uint64_t last_sequence;      /**< Sequence number of the last update that ended (0 if
                                      none). */
    uint32_t last_outcome;       /**< How it ended: KEEL_UPDATE_OUTCOME_*. */
    uint32_t last_reason;        /**< Why, for rolled back, refused and failed:
                                      KEEL_UPDATE_REASON_*; else 0. */
} keel_update_info_t;

KEEL__STATIC_ASSERT(sizeof(keel_status_t) == 4, "keel_status_t must be 32 bits");

KEEL__STATIC_ASSERT(sizeof(keel_abi_info_t) == 16, "keel_abi_info_t size");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, version) == 0, "keel_abi_info_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, abi_major) == 4, "keel_abi_info_t.abi_major");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, abi_minor) == 6, "keel_abi_info_t.abi_minor");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, visor_major) == 8, "keel_abi_info_t.visor_major");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, visor_minor) == 10, "keel_abi_info_t.visor_minor");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, visor_patch) == 12, "keel_abi_info_t.visor_patch");
KEEL__STATIC_ASSERT(offsetof(keel_abi_info_t, reserved) == 14, "keel_abi_info_t.reserved");

KEEL__STATIC_ASSERT(sizeof(keel_boot_info_t) == 24, "keel_boot_info_t size");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, version) == 0, "keel_boot_info_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, reason) == 4, "keel_boot_info_t.reason");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, restart_count) == 8,
                    "keel_boot_info_t.restart_count");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, crash_count) == 12,
                    "keel_boot_info_t.crash_count");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, restart_code) == 16,
                    "keel_boot_info_t.restart_code");
KEEL__STATIC_ASSERT(offsetof(keel_boot_info_t, visor_boot_count) == 20,
                    "keel_boot_info_t.visor_boot_count");

KEEL__STATIC_ASSERT(sizeof(keel_crash_report_t) == 112, "keel_crash_report_t size");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, version) == 0, "keel_crash_report_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, kind) == 4, "keel_crash_report_t.kind");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, time_us) == 8, "keel_crash_report_t.time_us");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, frame) == 16, "keel_crash_report_t.frame");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, sp) == 48, "keel_crash_report_t.sp");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, exc_return) == 52,
                    "keel_crash_report_t.exc_return");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, cfsr) == 56, "keel_crash_report_t.cfsr");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, hfsr) == 60, "keel_crash_report_t.hfsr");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, sfsr) == 64, "keel_crash_report_t.sfsr");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, sfar) == 68, "keel_crash_report_t.sfar");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, bfar) == 72, "keel_crash_report_t.bfar");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, mmfar) == 76, "keel_crash_report_t.mmfar");
KEEL__STATIC_ASSERT(offsetof(keel_crash_report_t, stack) == 80, "keel_crash_report_t.stack");

KEEL__STATIC_ASSERT(sizeof(keel_update_info_t) == 32, "keel_update_info_t size");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, version) == 0, "keel_update_info_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, on_trial) == 4, "keel_update_info_t.on_trial");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, installed_sequence) == 8,
                    "keel_update_info_t.installed_sequence");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, last_sequence) == 16,
                    "keel_update_info_t.last_sequence");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, last_outcome) == 24,
                    "keel_update_info_t.last_outcome");
KEEL__STATIC_ASSERT(offsetof(keel_update_info_t, last_reason) == 28,
                    "keel_update_info_t.last_reason");

/** Output of keel_net_status() (and, packed, the value of a KEEL_NOTIFY_NET_STATUS record).
 *  Set `version` to 1 before the call. Since ABI 2.1. */
typedef struct keel_net_status {
    uint32_t version;      /**< Struct version, set by the caller (1). */
    uint32_t state;        /**< KEEL_NET_STATE_*. */
    uint32_t offline;      /**< KEEL_NET_OFFLINE_*. */
    uint32_t wanted_by;    /**< KEEL_NET_WANTED_* bits. */
    uint32_t app_requests; /**< Network requests the app holds. */
} keel_net_status_t;

/** Input of keel_chan_open() (KEEL_CHAN_OPEN_PARAMS_LEN bytes). Addresses are 32-bit words, as
 *  in the ABI: fill the struct with keel_chan_open_init(). Since ABI 2.1. */
typedef struct keel_chan_open {
    uint32_t version;      /**< Struct version, set by the caller (1). */
    uint32_t kind;         /**< KEEL_CHAN_KIND_*. */
    uint32_t tag;          /**< Carried in every notification record of this channel. */
    uint32_t rx_buf;       /**< Receive buffer address. */
    uint32_t rx_len;       /**< Receive buffer length. */
    uint32_t tx_buf;       /**< Transmit buffer address. */
    uint32_t tx_len;       /**< Transmit buffer length. */
    uint32_t endpoint;     /**< Endpoint name address (MQTT: the broker profile; empty for HTTP
                                and config). Printable ASCII without spaces. */
    uint32_t endpoint_len; /**< Endpoint name length, at most KEEL_CHAN_MAX_ENDPOINT. */
} keel_chan_open_t;

/** Output of keel_chan_recv(). Set `version` to 1 before the call. Since ABI 2.1. */
typedef struct keel_chan_msg {
    uint32_t version; /**< Struct version, set by the caller (1). */
    uint32_t offset;  /**< Offset of the message's first byte in the receive buffer. */
    uint32_t len;     /**< Message length in bytes. */
    uint32_t pending; /**< Complete messages waiting, this one included. */
} keel_chan_msg_t;

/** Output of keel_chan_info(). Set `version` to 1 before the call. Since ABI 2.1. */
typedef struct keel_chan_info {
    uint32_t version;    /**< Struct version, set by the caller (1). */
    uint32_t kind;       /**< KEEL_CHAN_KIND_*. */
    uint32_t state;      /**< KEEL_CHAN_STATE_*. */
    uint32_t reason;     /**< KEEL_CHAN_REASON_* (0 while open). */
    uint32_t rx_pending; /**< Complete messages waiting in the receive buffer. */
    uint32_t tx_free;    /**< Largest message keel_chan_send() would accept now. */
} keel_chan_info_t;

KEEL__STATIC_ASSERT(sizeof(keel_net_status_t) == 20, "keel_net_status_t size");
KEEL__STATIC_ASSERT(offsetof(keel_net_status_t, version) == 0, "keel_net_status_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_net_status_t, state) == 4, "keel_net_status_t.state");
KEEL__STATIC_ASSERT(offsetof(keel_net_status_t, offline) == 8, "keel_net_status_t.offline");
KEEL__STATIC_ASSERT(offsetof(keel_net_status_t, wanted_by) == 12, "keel_net_status_t.wanted_by");
KEEL__STATIC_ASSERT(offsetof(keel_net_status_t, app_requests) == 16,
                    "keel_net_status_t.app_requests");

KEEL__STATIC_ASSERT(sizeof(keel_chan_open_t) == 36, "keel_chan_open_t size");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, version) == 0, "keel_chan_open_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, kind) == 4, "keel_chan_open_t.kind");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, tag) == 8, "keel_chan_open_t.tag");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, rx_buf) == 12, "keel_chan_open_t.rx_buf");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, rx_len) == 16, "keel_chan_open_t.rx_len");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, tx_buf) == 20, "keel_chan_open_t.tx_buf");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, tx_len) == 24, "keel_chan_open_t.tx_len");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, endpoint) == 28, "keel_chan_open_t.endpoint");
KEEL__STATIC_ASSERT(offsetof(keel_chan_open_t, endpoint_len) == 32,
                    "keel_chan_open_t.endpoint_len");

KEEL__STATIC_ASSERT(sizeof(keel_chan_msg_t) == 16, "keel_chan_msg_t size");
KEEL__STATIC_ASSERT(offsetof(keel_chan_msg_t, version) == 0, "keel_chan_msg_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_chan_msg_t, offset) == 4, "keel_chan_msg_t.offset");
KEEL__STATIC_ASSERT(offsetof(keel_chan_msg_t, len) == 8, "keel_chan_msg_t.len");
KEEL__STATIC_ASSERT(offsetof(keel_chan_msg_t, pending) == 12, "keel_chan_msg_t.pending");

KEEL__STATIC_ASSERT(sizeof(keel_chan_info_t) == 24, "keel_chan_info_t size");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, version) == 0, "keel_chan_info_t.version");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, kind) == 4, "keel_chan_info_t.kind");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, state) == 8, "keel_chan_info_t.state");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, reason) == 12, "keel_chan_info_t.reason");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, rx_pending) == 16, "keel_chan_info_t.rx_pending");
KEEL__STATIC_ASSERT(offsetof(keel_chan_info_t, tx_free) == 20, "keel_chan_info_t.tx_free");

/* ---------------------------------------------------------------------------------------- */
/* System calls                                                                             */
/* ---------------------------------------------------------------------------------------- */

/** Address of a slot's veneer, Thumb bit set (internal). */
#define KEEL__SLOT_ADDR(slot) \
    ((uintptr_t)((KEEL_NSC_BASE + KEEL_SLOT_SIZE * (uint32_t)(slot)) | 1u))

/* Every call is made with the app's interrupts masked (PRIMASK), as the ABI requires: the visor
 * masks them itself for the call's body, and this closes the few instructions on the way in and
 * out, so no interrupt or RTOS task switch can ever land inside a call. */
static inline uint32_t keel__irq_save(void)
{
    uint32_t primask;
    __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    return primask;
}

static inline void keel__irq_restore(uint32_t primask)
{
    __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
}

#define KEEL__CALL(ret_t, fn_t, slot, ...)                                  \
    __extension__({                                                         \
        uint32_t keel__m = keel__irq_save();                                \
        ret_t keel__r = ((fn_t)KEEL__SLOT_ADDR(slot))(__VA_ARGS__);         \
        keel__irq_restore(keel__m);                                         \
        keel__r;                                                            \
    })

/**
 * keel_abi_info - ABI and visor versions (slot KEEL_CALL_ABI_INFO).
 *
 * Set out->version = 1 before the call; on success the visor fills in the other fields.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT            `out` is not app memory (sizeof(*out) bytes)
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION out->version is not supported
 */
static inline keel_status_t keel_abi_info(keel_abi_info_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(keel_abi_info_t *), KEEL_CALL_ABI_INFO, out);
}

/**
 * keel_device_id - the device's ASCII id (slot KEEL_CALL_DEVICE_ID).
 *
 * Writes the KEEL_DEVICE_ID_LEN (34) byte id, "kd" followed by 32 lowercase hex digits, to
 * buf[0..34). The id is NOT NUL terminated. `len` is the size of `buf` and must be at least
 * KEEL_DEVICE_ID_LEN.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT     `buf` is not app memory
 *  - KEEL_STATUS_INVALID_BUFFER_SIZE `len` < KEEL_DEVICE_ID_LEN
 *  - KEEL_STATUS_UNAVAILABLE         the device is not provisioned (no factory data)
 */
static inline keel_status_t keel_device_id(uint8_t *buf, uint32_t len)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint8_t *, uint32_t), KEEL_CALL_DEVICE_ID, buf, len);
}

/**
 * keel_monotonic_us - microseconds since the visor started (slot KEEL_CALL_MONOTONIC_US).
 *
 * The clock never jumps (it is not affected by wall-clock synchronisation) and keeps running
 * across app restarts. Cannot fail; the value comes back in r0:r1.
 */
static inline uint64_t keel_monotonic_us(void)
{
    return KEEL__CALL(uint64_t, uint64_t (*)(void), KEEL_CALL_MONOTONIC_US);
}

/**
 * keel_wall_time_us - microseconds since the Unix epoch (slot KEEL_CALL_WALL_TIME_US).
 *
 * The wall clock is set by the server once the device is online; until then the call answers
 * KEEL_STATUS_TIME_NOT_SET and *out must not be relied upon.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_TIME_NOT_SET    the clock has not been synchronised yet
 *  - KEEL_STATUS_PARAMETER_FAULT `out` is not app memory
 */
static inline keel_status_t keel_wall_time_us(uint64_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint64_t *), KEEL_CALL_WALL_TIME_US, out);
}

/**
 * keel_log - emit one log line (slot KEEL_CALL_LOG).
 *
 * `level` is one of KEEL_LOG_ERROR, KEEL_LOG_WARN, KEEL_LOG_INFO, KEEL_LOG_DEBUG. `msg` points
 * to `len` bytes of text (no NUL terminator needed, no trailing newline needed); at most
 * KEEL_LOG_MAX_LEN (512) bytes.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT      msg[0..len) is not app memory
 *  - KEEL_STATUS_INVALID_ARGUMENT     `level` is not a KEEL_LOG_* value
 *  - KEEL_STATUS_LOG_MESSAGE_TOO_LONG `len` > KEEL_LOG_MAX_LEN
 */
static inline keel_status_t keel_log(uint32_t level, const uint8_t *msg, uint32_t len)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t, const uint8_t *, uint32_t), KEEL_CALL_LOG, level, msg, len);
}

/**
 * keel_restart - restart the app now (slot KEEL_CALL_RESTART).
 *
 * Does not return on success. `reason` is an app-defined code, reported after the restart as
 * keel_boot_info_t.restart_code (with reason KEEL_START_REQUESTED).
 *
 * Returns (only on failure):
 *  - KEEL_STATUS_UNAVAILABLE called from an interrupt/exception handler
 */
static inline keel_status_t keel_restart(uint32_t reason)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t), KEEL_CALL_RESTART, reason);
}

/**
 * keel_notify_setup - report events in a notification ring (slot KEEL_CALL_NOTIFY_SETUP).
 *
 * `ring` points to `bytes` = KEEL_NOTIFY_HEADER_LEN + KEEL_NOTIFY_RECORD_LEN * n bytes of app
 * RAM, 4-aligned, n a power of two in KEEL_NOTIFY_MIN_RECORDS..KEEL_NOTIFY_MAX_RECORDS. The
 * visor writes the header (head = tail = 0, capacity = n), routes interrupt line `irq`
 * (KEEL_NOTIFY_IRQ_FIRST..KEEL_NOTIFY_IRQ_LAST) to the app and pends it after every record;
 * enable the line in the NVIC after the call. An update that became ready before is reported
 * in the new ring. `ring = NULL` turns notifications off (and cancels the timer). Every app
 * start begins with notifications off.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_INVALID_BUFFER_SIZE `bytes` is not a valid ring size
 *  - KEEL_STATUS_INVALID_ARGUMENT    `irq` is not a line the app may use
 *  - KEEL_STATUS_PARAMETER_FAULT     the ring is not writable app RAM, or not 4-aligned
 */
static inline keel_status_t keel_notify_setup(void *ring, uint32_t bytes, uint32_t irq)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(void *, uint32_t, uint32_t), KEEL_CALL_NOTIFY_SETUP, ring, bytes, irq);
}

/**
 * keel_timer_set - the app's one-shot timer (slot KEEL_CALL_TIMER_SET).
 *
 * At `deadline_us` (keel_monotonic_us() time) the visor posts a KEEL_NOTIFY_TIMER record with
 * `tag`. A deadline in the past fires at once; 0 cancels; a new call replaces the timer.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE no notification ring is set up
 */
static inline keel_status_t keel_timer_set(uint64_t deadline_us, uint32_t tag)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t, uint32_t, uint32_t), KEEL_CALL_TIMER_SET, (uint32_t)deadline_us, (uint32_t)(deadline_us >> 32), tag);
}

/**
 * keel_watchdog_start - arm the app watchdog (slot KEEL_CALL_WATCHDOG_START).
 *
 * An app that does not call keel_watchdog_kick() within `timeout_ms` milliseconds is
 * restarted (keel_boot_info_t.reason = KEEL_START_WATCHDOG, crash kind
 * KEEL_FAULT_WATCHDOG). Calling it again changes the timeout. The watchdog cannot be
 * disarmed until the next restart.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_INVALID_ARGUMENT `timeout_ms` outside
 *                                 [KEEL_WATCHDOG_MIN_MS, KEEL_WATCHDOG_MAX_MS]
 */
static inline keel_status_t keel_watchdog_start(uint32_t timeout_ms)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t), KEEL_CALL_WATCHDOG_START, timeout_ms);
}

/**
 * keel_watchdog_kick - feed the app watchdog (slot KEEL_CALL_WATCHDOG_KICK).
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE      the watchdog was not started since the app (re)started
 */
static inline keel_status_t keel_watchdog_kick(void)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(void), KEEL_CALL_WATCHDOG_KICK);
}

/**
 * keel_boot_info - why and how often the app was (re)started (slot KEEL_CALL_BOOT_INFO).
 *
 * Set out->version = 1 before the call.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT            `out` is not app memory
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION out->version is not supported
 */
static inline keel_status_t keel_boot_info(keel_boot_info_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(keel_boot_info_t *), KEEL_CALL_BOOT_INFO, out);
}

/**
 * keel_last_crash - the last crash report (slot KEEL_CALL_LAST_CRASH).
 *
 * Set out->version = 1 before the call.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE                there is no crash report
 *  - KEEL_STATUS_PARAMETER_FAULT            `out` is not app memory
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION out->version is not supported
 */
static inline keel_status_t keel_last_crash(keel_crash_report_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(keel_crash_report_t *), KEEL_CALL_LAST_CRASH, out);
}

/**
 * keel_net_request - the app wants the network (slot KEEL_CALL_NET_REQUEST). Since ABI 2.1.
 *
 * Requests are counted (at most KEEL_NET_MAX_REQUESTS). While the app holds one, every change
 * of the link's state is reported as a KEEL_NOTIFY_NET_STATUS record carrying `tag`, starting
 * with the current state at once. The visor stays in charge of the link: it keeps it up for its
 * own needs (updates, logs) whatever the app does. Channels open only while it is connected.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE     the app already holds KEEL_NET_MAX_REQUESTS requests
 *  - KEEL_STATUS_NOT_IMPLEMENTED the visor is older than ABI 2.1
 */
static inline keel_status_t keel_net_request(uint32_t tag)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t), KEEL_CALL_NET_REQUEST, tag);
}

/**
 * keel_net_release - drops one network request (slot KEEL_CALL_NET_RELEASE). Since ABI 2.1.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE the app holds no request
 */
static inline keel_status_t keel_net_release(void)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(void), KEEL_CALL_NET_RELEASE);
}

/**
 * keel_net_status - the link's state, who wants it and why it is down (slot
 * KEEL_CALL_NET_STATUS). Since ABI 2.1. Set out->version = 1 before the call.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT            `out` is not app memory (sizeof(*out) bytes)
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION out->version is not supported
 */
static inline keel_status_t keel_net_status(keel_net_status_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(keel_net_status_t *), KEEL_CALL_NET_STATUS, out);
}

/**
 * keel_chan_open - opens a channel to a service of the server (slot KEEL_CALL_CHAN_OPEN).
 * Since ABI 2.1.
 *
 * `params` (fill it with keel_chan_open_init()) names the kind, the tag of the channel's
 * notification records, the app's receive and transmit buffers and the endpoint. On success
 * *handle_out is the channel's handle (never 0). The channel is announced to the server with its
 * first message (keel_chan_send()); messages queue in the transmit buffer meanwhile. Checks, in
 * this order: version, kind, endpoint length, alignment, sizes, overlap of the two buffers, then
 * the endpoint's characters, a free slot, overlap with other channels and the ring, the link.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT            params, handle_out, a buffer or the endpoint is not
 *                                           (writable) app RAM
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION params->version is not 1
 *  - KEEL_STATUS_UNKNOWN_CHANNEL_KIND       params->kind is not a KEEL_CHAN_KIND_*
 *  - KEEL_STATUS_INVALID_ARGUMENT           endpoint too long or not printable ASCII
 *  - KEEL_STATUS_INVALID_BUFFER_ALIGNMENT   a buffer is not KEEL_CHAN_BUFFER_ALIGN-aligned
 *  - KEEL_STATUS_INVALID_BUFFER_SIZE        a length is not a multiple of 4 within the limits
 *  - KEEL_STATUS_BUFFER_IN_USE              the buffers overlap each other, another channel's
 *                                           buffers or the notification ring
 *  - KEEL_STATUS_TOO_MANY_CHANNELS          KEEL_CHAN_MAX_CHANNELS channels are open
 *  - KEEL_STATUS_NETWORK_NOT_CONNECTED      the device is not connected to the server
 */
static inline keel_status_t keel_chan_open(const keel_chan_open_t *params, uint32_t *handle_out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(const keel_chan_open_t *, uint32_t *), KEEL_CALL_CHAN_OPEN, params, handle_out);
}

/**
 * keel_chan_send - queues one whole message in the channel's transmit buffer (slot
 * KEEL_CALL_CHAN_SEND). Since ABI 2.1.
 *
 * The message (encode it with keel_chan.h) is copied: `msg` may be reused at once. The visor
 * sends it as the server's credit and the link allow.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_INVALID_HANDLE      no such open channel
 *  - KEEL_STATUS_CHANNEL_CLOSED      the server or the link closed it (see keel_chan_info())
 *  - KEEL_STATUS_INVALID_BUFFER_SIZE the message can never fit the transmit buffer
 *  - KEEL_STATUS_WOULD_BLOCK         no room now: retry after KEEL_NOTIFY_CHANNEL_WRITABLE
 *                                    (MQTT) or later
 *  - KEEL_STATUS_RATE_LIMITED        too many channels were opened (announced) recently
 *  - KEEL_STATUS_PARAMETER_FAULT     msg[0..len) is not app memory
 */
static inline keel_status_t keel_chan_send(uint32_t handle, const void *msg, uint32_t len)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t, const void *, uint32_t), KEEL_CALL_CHAN_SEND, handle, msg, len);
}

/**
 * keel_chan_recv - where the oldest complete message lies in the receive buffer (slot
 * KEEL_CALL_CHAN_RECV). Since ABI 2.1. Set out->version = 1 before the call.
 *
 * The message is rx_buf[out->offset .. out->offset + out->len): read it in place (see
 * keel_chan_msg_ptr()), then free it with keel_chan_consume(). Messages already received can
 * still be read after the channel was closed by the server or the link.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_NO_DATA         no complete message waits
 *  - KEEL_STATUS_CHANNEL_CLOSED  none waits and the channel is closed
 *  - KEEL_STATUS_INVALID_HANDLE  no such open channel
 *  - KEEL_STATUS_PARAMETER_FAULT / KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION  as usual
 */
static inline keel_status_t keel_chan_recv(uint32_t handle, keel_chan_msg_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t, keel_chan_msg_t *), KEEL_CALL_CHAN_RECV, handle, out);
}

/**
 * keel_chan_consume - frees the oldest message, the one keel_chan_recv() reported (slot
 * KEEL_CALL_CHAN_CONSUME). Since ABI 2.1. Its room goes back to the server as credit.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_NO_DATA        no message waits
 *  - KEEL_STATUS_INVALID_HANDLE no such open channel
 *  - KEEL_STATUS_CHANNEL_CLOSED the record's length word in the buffer was overwritten (the
 *                               channel is closed with KEEL_CHAN_REASON_BUFFER_FAULT)
 */
static inline keel_status_t keel_chan_consume(uint32_t handle)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t), KEEL_CALL_CHAN_CONSUME, handle);
}

/**
 * keel_chan_close - closes a channel and writes 0 to *handle (slot KEEL_CALL_CHAN_CLOSE).
 * Since ABI 2.1.
 *
 * *handle becomes 0 also when it was already closed or invalid (then the call answers
 * KEEL_STATUS_INVALID_HANDLE). The buffers belong to the app again when the call returns.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_INVALID_HANDLE  *handle names no open channel (*handle is zeroed anyway)
 *  - KEEL_STATUS_PARAMETER_FAULT `handle` is not writable app memory
 */
static inline keel_status_t keel_chan_close(uint32_t *handle)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t *), KEEL_CALL_CHAN_CLOSE, handle);
}

/**
 * keel_chan_info - the channel's kind, state, closure reason and buffer levels (slot
 * KEEL_CALL_CHAN_INFO). Since ABI 2.1. Set out->version = 1 before the call.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_INVALID_HANDLE no such open channel
 *  - KEEL_STATUS_PARAMETER_FAULT / KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION  as usual
 */
static inline keel_status_t keel_chan_info(uint32_t handle, keel_chan_info_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(uint32_t, keel_chan_info_t *), KEEL_CALL_CHAN_INFO, handle, out);
}

/**
 * keel_update_confirm - confirm the update on trial (slot KEEL_CALL_UPDATE_CONFIRM).
 * Since ABI 1.1.
 *
 * After an update the new app runs on trial (keel_update_info_t.on_trial = 1): until it is
 * confirmed, crashing too often, hanging (watchdog) or the grace time passing rolls it back
 * to the previous app. Call this once the app knows it works (e.g. it reached its main loop
 * and its peripherals answer); the update then becomes permanent and is never rolled back.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_UNAVAILABLE     the app is not on trial (no update, or already confirmed by
 *                                the app or by the visor's policy)
 *  - KEEL_STATUS_NOT_IMPLEMENTED the visor has ABI 1.0 (no update support)
 */
static inline keel_status_t keel_update_confirm(void)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(void), KEEL_CALL_UPDATE_CONFIRM);
}

/**
 * keel_update_info - update state of this app (slot KEEL_CALL_UPDATE_INFO). Since ABI 1.1.
 *
 * Set out->version = 1 before the call. Tells whether the app runs on trial, the sequence
 * number of the installed (confirmed) app, and how the last update ended (confirmed, rolled
 * back, refused or failed, and why): an app can ask at start what happened to its last
 * update.
 *
 * Returns:
 *  - KEEL_STATUS_OK
 *  - KEEL_STATUS_PARAMETER_FAULT            `out` is not app memory (sizeof(*out) bytes)
 *  - KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION out->version is not supported
 *  - KEEL_STATUS_NOT_IMPLEMENTED            the visor has ABI 1.0 (no update support)
 */
static inline keel_status_t keel_update_info(keel_update_info_t *out)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(keel_update_info_t *), KEEL_CALL_UPDATE_INFO, out);
}

/**
 * keel_update_apply - apply a ready update now (slot KEEL_CALL_UPDATE_APPLY). Since ABI 1.1.
 *
 * After KEEL_EVENT_UPDATE_READY, the app calls this at a convenient moment: it is stopped and the
 * new version starts on trial. Does not return on success.
 *
 * Returns:
 *   KEEL_STATUS_UNAVAILABLE      no update is ready, or called from an exception handler.
 *   KEEL_STATUS_NOT_IMPLEMENTED  the visor implements ABI 1.0 only.
 */
static inline keel_status_t keel_update_apply(void)
{
    return KEEL__CALL(keel_status_t, keel_status_t (*)(void), KEEL_CALL_UPDATE_APPLY);
}

/* ---------------------------------------------------------------------------------------- */
/* Helpers (not system calls)                                                               */
/* ---------------------------------------------------------------------------------------- */

/**
 * keel_log_str - keel_log() of a NUL-terminated string (length computed here, no libc).
 *
 * Returns what keel_log() returns (KEEL_STATUS_LOG_MESSAGE_TOO_LONG if strlen(s) >
 * KEEL_LOG_MAX_LEN).
 */
static inline keel_status_t keel_log_str(uint32_t level, const char *s)
{
    uint32_t len = 0;
    while (s[len] != '\0') {
        len++;
    }
    return keel_log(level, (const uint8_t *)s, len);
}

/**
 * keel_chan_open_init - fills *p for keel_chan_open(): version 1, `kind` (KEEL_CHAN_KIND_*),
 * `tag`, the buffers and the endpoint (NULL/0 for none). Buffers: 4-aligned, lengths multiples
 * of 4 (see KEEL_CHAN_MIN_RX, KEEL_CHAN_MIN_TX, KEEL_CHAN_MAX_BUFFER).
 */
static inline void keel_chan_open_init(keel_chan_open_t *p, uint32_t kind, uint32_t tag, void *rx,
                                       uint32_t rx_len, void *tx, uint32_t tx_len,
                                       const char *endpoint, uint32_t endpoint_len)
{
    p->version = 1;
    p->kind = kind;
    p->tag = tag;
    p->rx_buf = (uint32_t)(uintptr_t)rx;
    p->rx_len = rx_len;
    p->tx_buf = (uint32_t)(uintptr_t)tx;
    p->tx_len = tx_len;
    p->endpoint = (uint32_t)(uintptr_t)endpoint;
    p->endpoint_len = endpoint_len;
}

/** The first byte of the message `m` (from keel_chan_recv()) in receive buffer `rx`. */
static inline const uint8_t *keel_chan_msg_ptr(const void *rx, const keel_chan_msg_t *m)
{
    return (const uint8_t *)rx + m->offset;
}

/* ---------------------------------------------------------------------------------------- */
/* Notifications: the app's side of the ring                                                 */
/* ---------------------------------------------------------------------------------------- */

/** One notification record (16 bytes). */
typedef struct keel_notify_record {
    uint16_t kind;  /**< KEEL_NOTIFY_* */
    uint16_t flags; /**< Reserved, 0. */
    uint32_t tag;   /**< The timer's, request's or channel's tag; 0 for visor events. */
    uint64_t value; /**< See the kind. */
} keel_notify_record_t;
KEEL__STATIC_ASSERT(sizeof(keel_notify_record_t) == 16, "keel_notify_record_t layout");

/** A ring of KEEL_NOTIFY_RING_RECORDS records, the size the SDK helpers use. Declare one
 *  (aligned, in RAM) and pass it to keel_notify_setup() with sizeof. */
#ifndef KEEL_NOTIFY_RING_RECORDS
#define KEEL_NOTIFY_RING_RECORDS 16u
#endif
typedef struct keel_notify_ring {
    volatile uint32_t head;     /**< Written by the visor. */
    volatile uint32_t tail;     /**< Written by the app. */
    volatile uint32_t capacity; /**< Written by the visor at setup. */
    volatile uint32_t reserved;
    volatile keel_notify_record_t records[KEEL_NOTIFY_RING_RECORDS];
} __attribute__((aligned(8))) keel_notify_ring_t;

/** Enables interrupt line `irq` in the app's NVIC (after keel_notify_setup() routed it). */
static inline void keel_notify_enable_irq(uint32_t irq)
{
    *(volatile uint8_t *)(uintptr_t)(0xE000E400u + irq) = 0xC0u;
    *(volatile uint32_t *)(uintptr_t)(0xE000E100u + 4u * (irq / 32u)) = 1u << (irq % 32u);
}

/** Takes the next record from `ring` into *out; 0 if the ring is empty. */
static inline int keel_notify_pop(keel_notify_ring_t *ring, keel_notify_record_t *out)
{
    uint32_t tail = ring->tail;
    if (ring->head == tail) {
        return 0;
    }
    volatile keel_notify_record_t *r = &ring->records[tail % KEEL_NOTIFY_RING_RECORDS];
    out->kind = r->kind;
    out->flags = r->flags;
    out->tag = r->tag;
    out->value = r->value;
    ring->tail = tail + 1u;
    return 1;
}

/** Sleeps (WFI with interrupts masked, so no wake-up is missed) until `ring` has a record or
 *  any interrupt of the app fired. */
static inline void keel_notify_sleep(keel_notify_ring_t *ring)
{
    __asm volatile("cpsid i" ::: "memory");
    if (ring->head == ring->tail) {
        __asm volatile("wfi" ::: "memory");
    }
    __asm volatile("cpsie i" ::: "memory");
}

/** Tag of the timer keel_sleep_us() uses. */
#define KEEL_SLEEP_TAG 0x534C5050u

/**
 * keel_sleep_us - sleeps for `us` microseconds or until an update is ready, with `ring` set up
 * by keel_notify_setup(); returns KEEL_EVENT_UPDATE_READY or KEEL_EVENT_NONE (time up). Other
 * records that arrive meanwhile are dropped (read the ring yourself to see them all).
 */
static inline uint32_t keel_sleep_us(keel_notify_ring_t *ring, uint32_t us)
{
    keel_notify_record_t r;
    if (keel_timer_set(keel_monotonic_us() + us, KEEL_SLEEP_TAG) != KEEL_STATUS_OK) {
        return KEEL_EVENT_NONE;
    }
    for (;;) {
        while (keel_notify_pop(ring, &r)) {
            if (r.kind == KEEL_NOTIFY_UPDATE_READY || r.kind == KEEL_NOTIFY_OVERRUN) {
                return KEEL_EVENT_UPDATE_READY;
            }
            if (r.kind == KEEL_NOTIFY_TIMER && r.tag == KEEL_SLEEP_TAG) {
                return KEEL_EVENT_NONE;
            }
        }
        keel_notify_sleep(ring);
    }
}

/**
 * keel_status_name - the name of a status without the KEEL_STATUS_ prefix, e.g. "OK",
 * "TIME_NOT_SET" (the same names the visor uses in its logs); "UNKNOWN" for a value this
 * header does not know.
 */
static inline const char *keel_status_name(keel_status_t status)
{
    switch (status) {
    case KEEL_STATUS_OK: return "OK";
    case KEEL_STATUS_TIME_NOT_SET: return "TIME_NOT_SET";
    case KEEL_STATUS_PARAMETER_FAULT: return "PARAMETER_FAULT";
    case KEEL_STATUS_INVALID_BUFFER_SIZE: return "INVALID_BUFFER_SIZE";
    case KEEL_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case KEEL_STATUS_UNSUPPORTED_STRUCT_VERSION: return "UNSUPPORTED_STRUCT_VERSION";
    case KEEL_STATUS_NOT_IMPLEMENTED: return "NOT_IMPLEMENTED";
    case KEEL_STATUS_UNAVAILABLE: return "UNAVAILABLE";
    case KEEL_STATUS_LOG_MESSAGE_TOO_LONG: return "LOG_MESSAGE_TOO_LONG";
    case KEEL_STATUS_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case KEEL_STATUS_INVALID_HANDLE: return "INVALID_HANDLE";
    case KEEL_STATUS_TOO_MANY_CHANNELS: return "TOO_MANY_CHANNELS";
    case KEEL_STATUS_CHANNEL_CLOSED: return "CHANNEL_CLOSED";
    case KEEL_STATUS_WOULD_BLOCK: return "WOULD_BLOCK";
    case KEEL_STATUS_NETWORK_NOT_CONNECTED: return "NETWORK_NOT_CONNECTED";
    case KEEL_STATUS_RATE_LIMITED: return "RATE_LIMITED";
    case KEEL_STATUS_INVALID_BUFFER_ALIGNMENT: return "INVALID_BUFFER_ALIGNMENT";
    case KEEL_STATUS_UNKNOWN_CHANNEL_KIND: return "UNKNOWN_CHANNEL_KIND";
    case KEEL_STATUS_BUFFER_IN_USE: return "BUFFER_IN_USE";
    case KEEL_STATUS_NO_DATA: return "NO_DATA";
    default: return "UNKNOWN";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* KEEL_H */
