/*
 * freertos-stress - FreeRTOS tasks making Keel system calls concurrently under a fast tick.
 *
 * Five worker tasks at three priorities (two pairs of equal priority, time-sliced, and one
 * above them) loop on system calls whose results they can check: keel_device_id (the same 34
 * bytes every time, nothing written past them), keel_abi_info, keel_boot_info and
 * keel_update_info (the same struct every time), keel_monotonic_us (never going back, per
 * task), keel_wall_time_us (not set, or a plausible time) and now and then keel_log. The
 * SysTick interrupt (20 kHz) makes a keel_monotonic_us call of its own at every tick. Every
 * result is checked; a mismatch is logged (the first few per task) and counted.
 *
 * The app runs in three phases, told apart by keel_boot_info():
 *   1. cold boot: a warm-up of WARMUP_CALLS calls, its result line, then keel_restart(1);
 *   2. restart code 1: STRESS_CALLS calls, the result line, then keel_restart(2);
 *   3. restart code 2: "freertos-stress: done", then it idles.
 * The visor logs its stack high-water at every app start, so the lines after restarts 1 and 2
 * tell whether the stress phase grew the visor's stacks beyond what the warm-up did.
 *
 * Result line (host/keel-vdev/tests/freertos.rs reads it):
 *   freertos-stress: calls=1000000 errors=0 isr_calls=N ticks=N ticks_in_visor=N switches=N
 *                    switches_in_visor=N virtual_us=N
 * ticks_in_visor / switches_in_visor count SysTick and PendSV exceptions taken while the
 * visor was running a system call (EXC_RETURN.S = 1: the interrupted context was secure).
 * With ABI 2, where every call masks non-secure exceptions, both must be 0.
 */
#include <stddef.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "task.h"

#include "keel.h"

/* ---- Phases ---------------------------------------------------------------------------- */

#define WARMUP_CALLS 50000u
#define STRESS_CALLS 1000000u
#define WORKERS 5u
/* A worker logs a progress line once every LOG_EVERY of its calls (that log is one of its
 * calls): the visor's log ring and its UART are slow, so not often. */
#define LOG_EVERY 10000u
/* Errors logged in detail per worker (all are counted). */
#define ERRORS_LOGGED 4u

/* ---- Small string helpers (no libc) ------------------------------------------------------ */

typedef struct {
    char buf[160];
    char *p;
} line_t;

static void line_start(line_t *l)
{
    l->p = l->buf;
}

static void line_str(line_t *l, const char *s)
{
    char *end = l->buf + sizeof l->buf;
    while (*s != '\0' && l->p < end) {
        *l->p++ = *s++;
    }
}

static void line_u64(line_t *l, uint64_t v)
{
    char digits[20];
    unsigned n = 0;
    do {
        digits[n++] = (char)('0' + (unsigned)(v % 10u));
        v /= 10u;
    } while (v != 0);
    char *end = l->buf + sizeof l->buf;
    while (n > 0 && l->p < end) {
        *l->p++ = digits[--n];
    }
}

static void line_hex(line_t *l, uint32_t v)
{
    static const char hex[] = "0123456789abcdef";
    line_str(l, "0x");
    char *end = l->buf + sizeof l->buf;
    for (int shift = 28; shift >= 0 && l->p < end; shift -= 4) {
        *l->p++ = hex[(v >> shift) & 0xfu];
    }
}

static keel_status_t line_log(line_t *l, uint32_t level)
{
    return keel_log(level, (const uint8_t *)l->buf, (uint32_t)(l->p - l->buf));
}

static void log_str(uint32_t level, const char *s)
{
    line_t l;
    line_start(&l);
    line_str(&l, s);
    (void)line_log(&l, level);
}

static int bytes_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a;
    const volatile uint8_t *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) {
            return 0;
        }
    }
    return 1;
}

static void bytes_fill(void *a, uint8_t v, size_t n)
{
    volatile uint8_t *x = a;
    for (size_t i = 0; i < n; i++) {
        x[i] = v;
    }
}

/* ---- ABI compatibility ------------------------------------------------------------------ */

/* keel_monotonic_us writes through a pointer in ABI 1 and returns the time in ABI 2. */
static uint64_t monotonic(keel_status_t *st)
{
#if KEEL_ABI_MAJOR >= 2
    *st = KEEL_STATUS_OK;
    return keel_monotonic_us();
#else
    uint64_t t = 0;
    *st = keel_monotonic_us(&t);
    return t;
#endif
}

/* ---- Reference answers (read in main before the scheduler starts) ------------------------ */

#define POISON 0xeeu
#define ID_BUF_LEN (KEEL_DEVICE_ID_LEN + 6u)

static uint8_t ref_id[KEEL_DEVICE_ID_LEN];
static keel_abi_info_t ref_abi;
static keel_boot_info_t ref_boot;
static keel_update_info_t ref_update;
static uint64_t phase_start_us;

/* ---- Interrupt-side counters (the shims below and the tick hook) -------------------------- */

/* Set just before vTaskStartScheduler(): a SysTick or PendSV left pending or running by an
 * earlier app must not reach the kernel before it runs. */
volatile uint32_t stress_rtos_started;
volatile uint32_t stress_ticks;
volatile uint32_t stress_ticks_in_visor;
volatile uint32_t stress_switches;
volatile uint32_t stress_switches_in_visor;
static volatile uint32_t isr_calls;
static volatile uint32_t isr_errors;
static volatile uint64_t isr_last_us;
static volatile uint32_t isr_active; /* the tick hook calls only during the worker phase */

/* The port's handlers, renamed by the Makefile (-DSysTick_Handler=FreeRTOS_SysTick_Handler,
 * -DPendSV_Handler=FreeRTOS_PendSV_Handler for port.c and portasm.c). */
void FreeRTOS_SysTick_Handler(void);
void FreeRTOS_PendSV_Handler(void);

#define SYST_CSR (*(volatile uint32_t *)0xe000e010u)
#define ICSR (*(volatile uint32_t *)0xe000ed04u)
#define ICSR_PENDSTCLR (1u << 25)
#define ICSR_PENDSVCLR (1u << 27)
#define EXC_RETURN_S (1u << 6)

void stress_systick(uint32_t exc_return) __attribute__((used));
void stress_systick(uint32_t exc_return)
{
    if (!stress_rtos_started) {
        SYST_CSR = 0; /* an earlier app's tick: stop it */
        return;
    }
    stress_ticks++;
    if (exc_return & EXC_RETURN_S) {
        stress_ticks_in_visor++;
    }
    FreeRTOS_SysTick_Handler();
}

/* SysTick: the C function above returns through the EXC_RETURN value still in lr. */
__attribute__((naked)) void SysTick_Handler(void)
{
    __asm__ volatile("mov r0, lr\n\t"
                     "b stress_systick\n\t");
}

/* PendSV (the context switch): count, then the port's handler with lr (EXC_RETURN) and
 * r4-r11 untouched. */
__attribute__((naked)) void PendSV_Handler(void)
{
    __asm__ volatile("ldr r0, =stress_rtos_started\n\t"
                     "ldr r0, [r0]\n\t"
                     "cbz r0, 2f\n\t"
                     "ldr r1, =stress_switches\n\t"
                     "ldr r2, [r1]\n\t"
                     "adds r2, #1\n\t"
                     "str r2, [r1]\n\t"
                     "tst lr, #0x40\n\t"
                     "beq 1f\n\t"
                     "ldr r1, =stress_switches_in_visor\n\t"
                     "ldr r2, [r1]\n\t"
                     "adds r2, #1\n\t"
                     "str r2, [r1]\n\t"
                     "1: b FreeRTOS_PendSV_Handler\n\t"
                     "2: bx lr\n\t"
                     ".ltorg\n\t");
}

/* A system call from interrupt context at every tick. */
void vApplicationTickHook(void)
{
    if (!isr_active) {
        return;
    }
    keel_status_t st;
    uint64_t t = monotonic(&st);
    isr_calls++;
    if (st != KEEL_STATUS_OK || t < isr_last_us) {
        isr_errors++;
    } else {
        isr_last_us = t;
    }
}

/* ---- Failures of the kernel's own checks ---------------------------------------------------- */

static void die(line_t *l) __attribute__((noreturn));
static void die(line_t *l)
{
    (void)line_log(l, KEEL_LOG_ERROR);
    /* Fault on purpose: the visor records the crash and restarts the app. */
    __builtin_trap();
}

void stress_assert_failed(const char *file, int line)
{
    line_t l;
    line_start(&l);
    line_str(&l, "freertos-stress: ASSERT FAILED ");
    line_str(&l, file);
    line_str(&l, ":");
    line_u64(&l, (uint64_t)line);
    die(&l);
}

void vApplicationStackOverflowHook(TaskHandle_t task, char *name)
{
    (void)task;
    line_t l;
    line_start(&l);
    line_str(&l, "freertos-stress: STACK OVERFLOW in task ");
    line_str(&l, name);
    die(&l);
}

/* ---- Workers -------------------------------------------------------------------------------- */

enum call_kind { K_DEVICE_ID, K_ABI_INFO, K_BOOT_INFO, K_UPDATE_INFO, K_MONOTONIC, K_WALL, K_KINDS, K_LOG = K_KINDS };

static const char *const kind_name[] = {
    "device_id", "abi_info", "boot_info", "update_info", "monotonic_us", "wall_time_us", "log",
};

#define WORKER_STACK_WORDS 512u

typedef struct {
    const char *name;
    UBaseType_t priority;
    uint32_t burst; /* calls between two vTaskDelay(1); 0: never blocks */
    uint32_t calls;
    uint32_t errors;
    uint64_t last_us;
} worker_t;

/* Two equal-priority pairs that time-slice at every tick, and one task above them that runs
 * in short bursts: a tick preempts a lower task whenever a higher one wakes. */
static worker_t workers[WORKERS] = {
    { .name = "low-a", .priority = 1, .burst = 0 },
    { .name = "low-b", .priority = 1, .burst = 0 },
    { .name = "mid-a", .priority = 2, .burst = 16 },
    { .name = "mid-b", .priority = 2, .burst = 12 },
    { .name = "high", .priority = 3, .burst = 8 },
};

/* Task memory (in .bss: only the table above has initial values). */
static StaticTask_t worker_tcbs[WORKERS];
static StackType_t worker_stacks[WORKERS][WORKER_STACK_WORDS];

static TaskHandle_t reporter_handle;
static StaticTask_t reporter_tcb;
static StackType_t reporter_stack[WORKER_STACK_WORDS];
static const char *phase_name;
static uint32_t phase_calls;
static uint32_t next_restart_code;

static void report_error(worker_t *w, uint32_t n, unsigned kind, keel_status_t st, const char *what,
                         uint32_t a, uint32_t b)
{
    w->errors++;
    if (w->errors > ERRORS_LOGGED) {
        return;
    }
    line_t l;
    line_start(&l);
    line_str(&l, "freertos-stress: ERROR task=");
    line_str(&l, w->name);
    line_str(&l, " call#");
    line_u64(&l, n);
    line_str(&l, " ");
    line_str(&l, kind_name[kind]);
    line_str(&l, " status=");
    line_str(&l, keel_status_name(st));
    line_str(&l, " ");
    line_str(&l, what);
    line_str(&l, " got=");
    line_hex(&l, a);
    line_str(&l, " want=");
    line_hex(&l, b);
    line_str(&l, " switches_in_visor=");
    line_u64(&l, stress_switches_in_visor);
    (void)line_log(&l, KEEL_LOG_ERROR);
}

/* One system call of kind `kind`, its result checked. */
static void one_call(worker_t *w, uint32_t n, unsigned kind)
{
    keel_status_t st;
    switch (kind) {
    case K_DEVICE_ID: {
        uint8_t id[ID_BUF_LEN];
        bytes_fill(id, POISON, sizeof id);
        st = keel_device_id(id, sizeof id);
        if (st != KEEL_STATUS_OK) {
            report_error(w, n, kind, st, "status", st, KEEL_STATUS_OK);
        } else if (!bytes_equal(id, ref_id, KEEL_DEVICE_ID_LEN)) {
            report_error(w, n, kind, st, "id differs, first word", *(uint32_t *)id,
                         *(uint32_t *)ref_id);
        } else {
            for (uint32_t i = KEEL_DEVICE_ID_LEN; i < sizeof id; i++) {
                if (id[i] != POISON) {
                    report_error(w, n, kind, st, "written past the id at byte", i, POISON);
                    break;
                }
            }
        }
        break;
    }
    case K_ABI_INFO: {
        keel_abi_info_t a;
        bytes_fill(&a, POISON, sizeof a);
        a.version = 1;
        st = keel_abi_info(&a);
        if (st != KEEL_STATUS_OK || !bytes_equal(&a, &ref_abi, sizeof a)) {
            report_error(w, n, kind, st, "abi major.minor", ((uint32_t)a.abi_major << 16) | a.abi_minor,
                         ((uint32_t)ref_abi.abi_major << 16) | ref_abi.abi_minor);
        }
        break;
    }
    case K_BOOT_INFO: {
        keel_boot_info_t b;
        bytes_fill(&b, POISON, sizeof b);
        b.version = 1;
        st = keel_boot_info(&b);
        if (st != KEEL_STATUS_OK || !bytes_equal(&b, &ref_boot, sizeof b)) {
            report_error(w, n, kind, st, "restart_count", b.restart_count, ref_boot.restart_count);
        }
        break;
    }
    case K_UPDATE_INFO: {
        keel_update_info_t u;
        bytes_fill(&u, POISON, sizeof u);
        u.version = 1;
        st = keel_update_info(&u);
        if (st != KEEL_STATUS_OK || !bytes_equal(&u, &ref_update, sizeof u)) {
            report_error(w, n, kind, st, "last_outcome", u.last_outcome, ref_update.last_outcome);
        }
        break;
    }
    case K_MONOTONIC: {
        uint64_t t = monotonic(&st);
        if (st != KEEL_STATUS_OK) {
            report_error(w, n, kind, st, "status", st, KEEL_STATUS_OK);
        } else if (t < w->last_us) {
            report_error(w, n, kind, st, "went back by (us)", (uint32_t)(w->last_us - t), 0);
        } else if (t - w->last_us > 100000000u) {
            report_error(w, n, kind, st, "jumped ahead by (us)", (uint32_t)(t - w->last_us), 0);
        } else {
            w->last_us = t;
        }
        break;
    }
    case K_WALL: {
        uint64_t t = 0;
        st = keel_wall_time_us(&t);
        /* Not set (no server in the test), or after 2017-01-01. */
        if (st != KEEL_STATUS_TIME_NOT_SET &&
            !(st == KEEL_STATUS_OK && t > 1483228800000000ull)) {
            report_error(w, n, kind, st, "wall time (s)", (uint32_t)(t / 1000000u), 0);
        }
        break;
    }
    default: { /* K_LOG */
        line_t l;
        line_start(&l);
        line_str(&l, "freertos-stress: ");
        line_str(&l, w->name);
        line_str(&l, " calls=");
        line_u64(&l, n);
        line_str(&l, " errors=");
        line_u64(&l, w->errors);
        st = line_log(&l, KEEL_LOG_DEBUG);
        if (st != KEEL_STATUS_OK) {
            report_error(w, n, kind, st, "status", st, KEEL_STATUS_OK);
        }
        break;
    }
    }
}

/* A control build (make STRESS_MASK_CALLS=1) masks the tick and task switches around every
 * call itself, as a visor with ABI 1 would need: it shows that a failure of the normal build on
 * such a visor comes from being preempted inside the visor, not from the checks. */
#ifndef STRESS_MASK_CALLS
#define STRESS_MASK_CALLS 0
#endif

static void checked_call(worker_t *w, uint32_t n, unsigned kind)
{
#if STRESS_MASK_CALLS
    UBaseType_t mask = taskENTER_CRITICAL_FROM_ISR();
    one_call(w, n, kind);
    taskEXIT_CRITICAL_FROM_ISR(mask);
#else
    one_call(w, n, kind);
#endif
}

/* The phase's calls are one pool that the workers draw from in chunks, so the CPU stays busy
 * with calls until the last one whatever the priorities: the phase lasts as long as the calls
 * take, and the total is exact. */
#define CHUNK 16u
static uint32_t pool_taken;

static uint32_t claim_calls(void)
{
    taskENTER_CRITICAL();
    uint32_t left = phase_calls - pool_taken;
    uint32_t n = left < CHUNK ? left : CHUNK;
    pool_taken += n;
    taskEXIT_CRITICAL();
    return n;
}

static void worker_task(void *arg)
{
    worker_t *w = arg;
    uint32_t id = (uint32_t)(w - workers);
    uint32_t n = 0; /* this worker's calls so far */
    for (uint32_t k; (k = claim_calls()) != 0;) {
        for (; k > 0; k--, n++) {
            unsigned kind = (n % LOG_EVERY == LOG_EVERY - 1u) ? (unsigned)K_LOG
                                                              : (unsigned)((n + id) % K_KINDS);
            checked_call(w, n, kind);
            w->calls++;
            if (w->burst != 0 && n % w->burst == w->burst - 1u) {
                vTaskDelay(1);
            }
        }
    }
    xTaskNotifyGive(reporter_handle);
    for (;;) {
        (void)ulTaskNotifyTake(pdTRUE, portMAX_DELAY);
    }
}

/* Waits for every worker, logs the result line and restarts into the next phase. */
static void reporter_task(void *arg)
{
    (void)arg;
    for (uint32_t done = 0; done < WORKERS;) {
        done += ulTaskNotifyTake(pdTRUE, portMAX_DELAY);
    }
    isr_active = 0;
    keel_status_t st;
    uint64_t end_us = monotonic(&st);

    uint32_t calls = 0;
    uint32_t errors = isr_errors;
    for (uint32_t i = 0; i < WORKERS; i++) {
        calls += workers[i].calls;
        errors += workers[i].errors;
    }
    line_t l;
    line_start(&l);
    line_str(&l, "freertos-stress: ");
    line_str(&l, phase_name);
    line_str(&l, "calls per task:");
    for (uint32_t i = 0; i < WORKERS; i++) {
        line_str(&l, " ");
        line_str(&l, workers[i].name);
        line_str(&l, "=");
        line_u64(&l, workers[i].calls);
    }
    (void)line_log(&l, KEEL_LOG_INFO);

    line_start(&l);
    line_str(&l, "freertos-stress: ");
    line_str(&l, phase_name);
    line_str(&l, "calls=");
    line_u64(&l, calls);
    line_str(&l, " errors=");
    line_u64(&l, errors);
    line_str(&l, " isr_calls=");
    line_u64(&l, isr_calls);
    line_str(&l, " ticks=");
    line_u64(&l, stress_ticks);
    line_str(&l, " ticks_in_visor=");
    line_u64(&l, stress_ticks_in_visor);
    line_str(&l, " switches=");
    line_u64(&l, stress_switches);
    line_str(&l, " switches_in_visor=");
    line_u64(&l, stress_switches_in_visor);
    line_str(&l, " virtual_us=");
    line_u64(&l, end_us - phase_start_us);
    (void)line_log(&l, KEEL_LOG_INFO);

    /* Hand over cleanly: no tick and no pending switch reaches the next start of the app
     * before its own main() runs. */
    taskDISABLE_INTERRUPTS();
    stress_rtos_started = 0;
    SYST_CSR = 0;
    ICSR = ICSR_PENDSTCLR | ICSR_PENDSVCLR;
    st = keel_restart(next_restart_code);
    line_start(&l);
    line_str(&l, "freertos-stress: ERROR keel_restart returned ");
    line_str(&l, keel_status_name(st));
    die(&l);
}

/* ---- main ------------------------------------------------------------------------------------ */

static void idle_forever(void) __attribute__((noreturn));
static void idle_forever(void)
{
    for (;;) {
        __asm__ volatile("wfi");
    }
}

int main(void)
{
    /* Whatever an earlier app left running (a SysTick, a pending PendSV) stops here. */
    SYST_CSR = 0;
    ICSR = ICSR_PENDSTCLR | ICSR_PENDSVCLR;

    keel_status_t st;
    bytes_fill(&ref_boot, POISON, sizeof ref_boot);
    ref_boot.version = 1;
    st = keel_boot_info(&ref_boot);
    if (st != KEEL_STATUS_OK) {
        log_str(KEEL_LOG_ERROR, "freertos-stress: ERROR keel_boot_info failed");
        idle_forever();
    }
    if (ref_boot.reason == KEEL_START_REQUESTED && ref_boot.restart_code == 2) {
        log_str(KEEL_LOG_INFO, "freertos-stress: done");
        idle_forever();
    }
    if (ref_boot.reason == KEEL_START_REQUESTED && ref_boot.restart_code == 1) {
        phase_name = "";
        phase_calls = STRESS_CALLS;
        next_restart_code = 2;
    } else if (ref_boot.reason == KEEL_START_COLD_BOOT) {
        phase_name = "warm-up ";
        phase_calls = WARMUP_CALLS;
        next_restart_code = 1;
    } else {
        line_t l;
        line_start(&l);
        line_str(&l, "freertos-stress: stopped: started with reason=");
        line_u64(&l, ref_boot.reason);
        line_str(&l, " code=");
        line_u64(&l, ref_boot.restart_code);
        (void)line_log(&l, KEEL_LOG_ERROR);
        idle_forever();
    }

    uint8_t id[ID_BUF_LEN];
    st = keel_device_id(id, sizeof id);
    bytes_fill(&ref_abi, POISON, sizeof ref_abi);
    ref_abi.version = 1;
    keel_status_t st_abi = keel_abi_info(&ref_abi);
    bytes_fill(&ref_update, POISON, sizeof ref_update);
    ref_update.version = 1;
    keel_status_t st_up = keel_update_info(&ref_update);
    keel_status_t st_mono;
    phase_start_us = monotonic(&st_mono);
    if (st != KEEL_STATUS_OK || st_abi != KEEL_STATUS_OK || st_up != KEEL_STATUS_OK ||
        st_mono != KEEL_STATUS_OK) {
        log_str(KEEL_LOG_ERROR, "freertos-stress: ERROR a reference call failed");
        idle_forever();
    }
    for (uint32_t i = 0; i < KEEL_DEVICE_ID_LEN; i++) {
        ref_id[i] = id[i];
    }
    isr_last_us = phase_start_us;

    line_t l;
    line_start(&l);
    line_str(&l, "freertos-stress: ");
    line_str(&l, phase_name);
    line_str(&l, "start: ");
    line_u64(&l, phase_calls);
    line_str(&l, " calls, ");
    line_u64(&l, WORKERS);
    line_str(&l, " tasks, tick ");
    line_u64(&l, configTICK_RATE_HZ);
    line_str(&l, " Hz, FreeRTOS ");
    line_str(&l, tskKERNEL_VERSION_NUMBER);
    line_str(&l, ", abi ");
    line_u64(&l, ref_abi.abi_major);
    line_str(&l, ".");
    line_u64(&l, ref_abi.abi_minor);
    line_str(&l, ", device=");
    for (uint32_t i = 0; i < KEEL_DEVICE_ID_LEN && l.p < l.buf + sizeof l.buf; i++) {
        *l.p++ = (char)ref_id[i];
    }
    (void)line_log(&l, KEEL_LOG_INFO);

    for (uint32_t i = 0; i < WORKERS; i++) {
        worker_t *w = &workers[i];
        w->last_us = phase_start_us;
        (void)xTaskCreateStatic(worker_task, w->name, WORKER_STACK_WORDS, w, w->priority,
                                worker_stacks[i], &worker_tcbs[i]);
    }
    reporter_handle = xTaskCreateStatic(reporter_task, "report", WORKER_STACK_WORDS, NULL,
                                        configMAX_PRIORITIES - 1, reporter_stack, &reporter_tcb);

    isr_active = 1;
    stress_rtos_started = 1;
    vTaskStartScheduler();

    log_str(KEEL_LOG_ERROR, "freertos-stress: ERROR vTaskStartScheduler returned");
    idle_forever();
}
