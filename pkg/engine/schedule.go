package engine

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// MinRefreshInterval is the shortest interval a source's schedule may
// name: a refresh pulls a whole base backup from the source.
const MinRefreshInterval = 10 * time.Second

// Schedule is when a source is refreshed: every interval (counted from the
// end of the last refresh), at the times of a five-field cron expression
// in UTC, or never by itself (the zero Schedule: refreshed when asked).
type Schedule struct {
	every time.Duration
	cron  cron.Schedule
}

// cronParser reads the five standard fields (minute, hour, day of month,
// month, day of week) and nothing else: no seconds, no descriptors such as
// @daily, no time zone.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow)

// ParseSchedule reads a source's schedule: "" (none), a Go duration such
// as "6h" or "90m" of at least MinRefreshInterval, or a five-field cron
// expression such as "0 3 * * *" (03:00 UTC every day), evaluated in UTC.
func ParseSchedule(s string) (Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Schedule{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < MinRefreshInterval {
			return Schedule{}, fmt.Errorf("%w: schedule %q is shorter than the shortest interval, %s", ErrInvalid, s, MinRefreshInterval)
		}
		return Schedule{every: d}, nil
	}
	if strings.Contains(s, "TZ=") {
		return Schedule{}, fmt.Errorf("%w: schedule %q names a time zone: cron schedules are in UTC; give the five fields only", ErrInvalid, s)
	}
	c, err := cronParser.Parse(s)
	if err != nil {
		return Schedule{}, fmt.Errorf("%w: schedule %q is neither an interval such as \"6h\" nor a five-field cron expression in UTC such as \"0 3 * * *\" (%v)", ErrInvalid, s, err)
	}
	if spec, ok := c.(*cron.SpecSchedule); ok {
		spec.Location = time.UTC
	}
	sched := Schedule{cron: c}
	if sched.Next(time.Now()) == nil {
		return Schedule{}, fmt.Errorf("%w: schedule %q matches no time (such as the 30th of February)", ErrInvalid, s)
	}
	return sched, nil
}

// Next is the time of the first refresh after t; nil for the zero
// Schedule (or a cron expression that matches no time).
func (s Schedule) Next(t time.Time) *time.Time {
	var next time.Time
	switch {
	case s.every > 0:
		next = t.Add(s.every)
	case s.cron != nil:
		next = s.cron.Next(t.UTC())
		if next.IsZero() {
			return nil
		}
	default:
		return nil
	}
	next = next.UTC()
	return &next
}

// First is the time of a new source's first refresh, made at now: at once
// for an interval, at the next matching time for a cron expression (a
// time chosen to spare the source), none without a schedule.
func (s Schedule) First(now time.Time) *time.Time {
	if s.every > 0 {
		now = now.UTC()
		return &now
	}
	return s.Next(now)
}
