/* hmigrate runtime: equivalence points for cross-ISA migration.
 * Linked into every binary built by hmigrate-cc. */
#ifndef HMIGRATE_RT_H
#define HMIGRATE_RT_H

/* Signals (fixed numbers: SIGRTMIN+5/+6 under musl). Park: every thread parks at its
 * next function entry; resume: the request is withdrawn and parked threads go on. */
#define HMIGRATE_SIGPARK 40
#define HMIGRATE_SIGRESUME 41
#define HMIGRATE_MAX_THREADS 1024
#define HMIGRATE_DEFAULT_FILE "/run/hmigrate/parked"
#define HMIGRATE_FALLBACK_FILE "/tmp/.hmigrate-parked"

struct hmigrate_state {
	volatile int request;    /* 1 while a park is requested (futex word) */
	volatile int parked;     /* threads currently parked */
	volatile int generation; /* bumped by every park/resume signal */
	volatile int announced;  /* the parked file exists */
	volatile int announcing; /* lock for writing it */
	int sig_park, sig_resume;
	int foreign_tasks;       /* tasks that are not program threads ($HMIGRATE_FOREIGN_TASKS) */
	volatile int tids[HMIGRATE_MAX_THREADS]; /* parked threads (0 = free slot) */
	char path[256];          /* the parked file */
	/* The return address of the last untranslatable frame that kept a thread from
	 * parking, written once per request to "<path>.blocked" so that a tool that times
	 * out can name the construct (the metadata maps it to a function and file:line). */
	volatile unsigned long blocked_ra;
	volatile int blocked_written;
};

extern struct hmigrate_state hmigrate_state;

/* Functions whose frames cannot be translated (va_list state, values in callee-saved
 * registers, variable-size frames...). hmigrate-cc fills this table in the linked
 * binaries after analysing them; no thread parks while one of them is on its stack. */
#define HMIGRATE_MAX_UNCLEAN 8192
struct hmigrate_unclean {
	unsigned long magic; /* HMIGRATE_UNCLEAN_MAGIC, so the patcher finds the right bytes */
	unsigned long count;
	unsigned long range[2 * HMIGRATE_MAX_UNCLEAN]; /* sorted [start, end) pairs */
};
#define HMIGRATE_UNCLEAN_MAGIC 0x6e61656c636e7568ul /* "hunclean" */
extern struct hmigrate_unclean hmigrate_unclean;

int hmigrate_requested(void);
int hmigrate_generation(void);
void hmigrate_poll(void); /* instrumented no-op: its entry is an equivalence point */

#endif
