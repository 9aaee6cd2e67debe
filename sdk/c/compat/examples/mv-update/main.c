/*
 * mv-update - Microvisor-compat conformance app: polite update, written against mv_syscalls.h
 * only.
 *
 * Opens a notification buffer and a system notification for UPDATE events, then waits. When
 * UPDATEDOWNLOADED arrives it logs and calls mvRestart(MV_RESTARTMODE_AUTOAPPLYUPDATE), which
 * applies the update (on Keel: keel_update_apply(); the new version starts on trial). Build two
 * versions with -DAPP_VERSION=1 and -DAPP_VERSION=2 (default 1). Logs:
 *
 *   mv-update: start version=<v> wake=<MvWakeReason number>
 *   mv-update: waiting for an update (version=<v>)
 *   mv-update: UPDATEDOWNLOADED tag=<tag>, applying
 *   mv-update: FAIL mvRestart status=<status>         (only if the apply path returned)
 * and, in a version > 1:
 *   mv-update: PASS version=<v> wake=<n>              (wake 9 = APPLICATIONUPDATE)
 *
 * What the end-to-end test checks: deploy version 1 with a polite bundle, publish version 2;
 * version 1 logs UPDATEDOWNLOADED and applying, then version 2's start and PASS lines appear
 * (wake=9), and no FAIL line. A Microvisor app never confirms an update: give its bundle the
 * confirm-by-link policy (see ../../README.md).
 */
#include <stdint.h>

#include "mv_board.h"
#include "mv_syscalls.h"

#ifndef APP_VERSION
#define APP_VERSION 1
#endif

#define NOTE_IRQ 84u
#define NOTE_RECORDS 4u
#define TAG_UPDATE 7u

static volatile struct MvNotification notes[NOTE_RECORDS] __attribute__((aligned(8)));
static volatile uint32_t note_index, update_tag, updates;

void IRQ84_Handler(void)
{
    volatile struct MvNotification *n = &notes[note_index];
    if (n->event_type == MV_EVENTTYPE_UPDATEDOWNLOADED) {
        update_tag = n->tag;
        updates++;
    }
    n->event_type = MV_EVENTTYPE_NOEVENT;
    note_index = (note_index + 1u) % NOTE_RECORDS;
}

int main(void)
{
    board_init();
    enum MvWakeReason wake = MV_WAKEREASON_COLDBOOT;
    enum MvStatus st = mvGetWakeReason(&wake);
    board_log("mv-update: start version=%u wake=%u status=%s", (unsigned)APP_VERSION, (unsigned)wake,
              mvStatusName(st));
    if (APP_VERSION > 1) {
        board_log("mv-update: PASS version=%u wake=%u", (unsigned)APP_VERSION, (unsigned)wake);
    }

    MvNotificationHandle nh = 0;
    struct MvNotificationSetup ns = {.irq = NOTE_IRQ, .buffer = (struct MvNotification *)notes,
                                     .buffer_size = sizeof notes};
    st = mvSetupNotifications(&ns, &nh);
    if (st != MV_STATUS_OKAY) {
        board_log("mv-update: FAIL mvSetupNotifications status=%s", mvStatusName(st));
        board_idle();
    }
    MvSystemEventHandle sys = 0;
    struct MvOpenSystemNotificationParams sp = {.notification_handle = nh, .notification_tag = TAG_UPDATE,
                                                .notification_source = MV_SYSTEMNOTIFICATIONSOURCE_UPDATE};
    st = mvOpenSystemNotification(&sp, &sys);
    if (st != MV_STATUS_OKAY || sys == 0) {
        board_log("mv-update: FAIL mvOpenSystemNotification status=%s", mvStatusName(st));
        board_idle();
    }
    board_log("mv-update: waiting for an update (version=%u)", (unsigned)APP_VERSION);
    while (updates == 0) {
        board_sleep();
    }
    board_log("mv-update: UPDATEDOWNLOADED tag=%u, applying", (unsigned)update_tag);
    st = mvRestart(MV_RESTARTMODE_AUTOAPPLYUPDATE);
    board_log("mv-update: FAIL mvRestart status=%s", mvStatusName(st));
    board_idle();
}
