package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Fifty concurrent inserts by one owner at a quota of ten: exactly ten
// rows, and forty refusals that say the owner has ten.
func TestInstanceQuotaHoldsUnderConcurrentInserts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "prod")
	newInstance(t, s, img.ID, "bob@example.com") // another owner's: not counted
	const tries, quota = 50, 10
	var wg sync.WaitGroup
	errs := make([]error, tries)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ada@example.com",
				Quota: InstanceQuota{Instances: quota}})
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		var q *QuotaError
		switch {
		case err == nil:
			made++
		case errors.As(err, &q) && errors.Is(err, ErrQuotaExceeded):
			if q.Quota != QuotaInstances || q.Owner != "ada@example.com" || q.Count != quota || q.Limit != quota {
				t.Errorf("refusal %+v, want ada's %d instances at a quota of %d", q, quota, quota)
			}
		default:
			t.Errorf("insert failed otherwise: %v", err)
		}
	}
	rows := must[[]Instance](t)(s.ListInstances(ctx, "ada@example.com"))
	if made != quota || len(rows) != quota {
		t.Fatalf("%d inserts passed and %d rows exist, want exactly %d", made, len(rows), quota)
	}
}

func TestInstanceQuotaCountsWhatItShould(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "prod")
	q := InstanceQuota{Instances: 3, Protected: 1}
	create := func(protected bool) (Instance, error) {
		return s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ada@example.com", Protected: protected, Quota: q})
	}
	first := must[Instance](t)(create(true))
	var qerr *QuotaError
	if _, err := create(true); !errors.As(err, &qerr) || qerr.Quota != QuotaProtected || qerr.Count != 1 {
		t.Fatalf("a second protected instance at a quota of 1: %v", err)
	}
	second := must[Instance](t)(create(false))
	must[Instance](t)(create(false))
	if _, err := create(false); !errors.As(err, &qerr) || qerr.Quota != QuotaInstances || qerr.Count != 3 {
		t.Fatalf("a fourth instance at a quota of 3: %v", err)
	}
	// One on its way out no longer counts.
	check(t, s.SetInstanceStatus(ctx, second.ID, InstanceDestroying, ""))
	must[Instance](t)(create(false))

	// Protecting by an update is held by the same quota, and the
	// instance that is protected already does not count against itself.
	yes, no := true, false
	third := must[[]Instance](t)(s.ListInstances(ctx, "ada@example.com"))[2]
	if err := s.SetInstanceExpiryWithin(ctx, third.ID, nil, &yes, 1); !errors.As(err, &qerr) || qerr.Quota != QuotaProtected || qerr.Count != 1 || qerr.Limit != 1 {
		t.Fatalf("protecting a second instance at a quota of 1: %v", err)
	}
	if got := must[Instance](t)(s.GetInstance(ctx, third.ID)); got.Protected {
		t.Fatal("the refused update protected the instance")
	}
	check(t, s.SetInstanceExpiryWithin(ctx, first.ID, nil, &yes, 1))
	check(t, s.SetInstanceExpiryWithin(ctx, first.ID, nil, &no, 1))
	check(t, s.SetInstanceExpiryWithin(ctx, third.ID, nil, &yes, 1))
	if err := s.SetInstanceExpiryWithin(ctx, 424242, nil, &yes, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("protecting a missing instance: %v, want ErrNotFound", err)
	}
	// A missing image is still ErrNotFound with a quota.
	if _, err := s.CreateInstance(ctx, InstanceInput{ImageID: 424242, Owner: "bob@example.com", Quota: q}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an instance of a missing image: %v, want ErrNotFound", err)
	}
}

func TestBackupQuota(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "prod")
	create := func(owner string, q BackupQuota) (Backup, error) {
		return s.CreateBackup(ctx, BackupInput{ImageID: img.ID, Owner: owner, Quota: q})
	}
	var qerr *QuotaError
	a := must[Backup](t)(create("ada@example.com", BackupQuota{OwnerRunning: 1}))
	if _, err := create("ada@example.com", BackupQuota{OwnerRunning: 1}); !errors.As(err, &qerr) || qerr.Quota != QuotaOwnerRunningBackup || qerr.Count != 1 {
		t.Fatalf("ada's second running backup at a quota of 1: %v", err)
	}
	must[Backup](t)(create("bob@example.com", BackupQuota{OwnerRunning: 1, Running: 2}))
	if _, err := create("cy@example.com", BackupQuota{OwnerRunning: 1, Running: 2}); !errors.As(err, &qerr) || qerr.Quota != QuotaRunningBackups || qerr.Count != 2 || qerr.Owner != "" {
		t.Fatalf("a third running backup at a quota of 2: %v", err)
	}
	check(t, s.SetBackupDone(ctx, a.ID, "/b/1.tar.zst", 1000, "ab"))
	must[Backup](t)(create("ada@example.com", BackupQuota{OwnerRunning: 1, Running: 2, TotalBytes: 1001}))
	if _, err := create("cy@example.com", BackupQuota{TotalBytes: 1000}); !errors.As(err, &qerr) || qerr.Quota != QuotaBackupBytes || qerr.Count != 1000 {
		t.Fatalf("a backup once they take 1000 bytes at a quota of 1000: %v", err)
	}
	if n := len(must[[]Backup](t)(s.ListBackups(ctx, BackupFilter{}))); n != 3 {
		t.Fatalf("%d backups recorded, want 3 (no refused one)", n)
	}
}

// BenchmarkCreateInstance measures the insert of an instance's row alone
// and with a quota counted in its transaction.
func BenchmarkCreateInstance(b *testing.B) {
	for _, c := range []struct {
		name  string
		quota InstanceQuota
	}{{"no_quota", InstanceQuota{}}, {"quota", InstanceQuota{Instances: 1 << 30, Protected: 1 << 30}}} {
		b.Run(c.name, func(b *testing.B) {
			s := newStore(b)
			img, err := s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now()})
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; b.Loop(); i++ {
				if _, err := s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: fmt.Sprintf("u%d@example.com", i%10), Quota: c.quota}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllocatePort gives a port to one more instance, and takes it
// back, beside 10 and 1,000 instances holding the lowest ports.
func BenchmarkAllocatePort(b *testing.B) {
	for _, held := range []int{10, 1000} {
		b.Run(fmt.Sprintf("held-%d", held), func(b *testing.B) {
			s := newStore(b)
			img, err := s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now()})
			if err != nil {
				b.Fatal(err)
			}
			for range held {
				inst, err := s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "upload"})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.AllocatePort(ctx, inst.ID, 20000, 22000, nil); err != nil {
					b.Fatal(err)
				}
			}
			inst, err := s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "upload"})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if p, err := s.AllocatePort(ctx, inst.ID, 20000, 22000, nil); err != nil || p != 20000+held {
					b.Fatalf("port %d, %v", p, err)
				}
				if err := s.ReleasePort(ctx, inst.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Fifty concurrent branches by one owner at a quota of five: exactly five
// rows, and forty-five refusals that say the owner has five.
func TestBranchQuotaHoldsUnderConcurrentInserts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	newImage(t, s, "prod") // no owner: not counted
	must[Image](t)(s.CreateImage(ctx, ImageInput{Name: "bob's", Owner: "bob@example.com", BranchQuota: 1}))
	const tries, quota = 50, 5
	var wg sync.WaitGroup
	errs := make([]error, tries)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CreateImage(ctx, ImageInput{Name: fmt.Sprint("branch ", i), BackedUpAt: time.Now(),
				Owner: "ada@example.com", FromSnapshot: true, BranchQuota: quota})
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		var q *QuotaError
		switch {
		case err == nil:
			made++
		case errors.As(err, &q) && errors.Is(err, ErrQuotaExceeded):
			if q.Quota != QuotaBranches || q.Owner != "ada@example.com" || q.Count != quota || q.Limit != quota {
				t.Errorf("refusal %+v, want ada's %d branches at a quota of %d", q, quota, quota)
			}
		default:
			t.Errorf("insert failed otherwise: %v", err)
		}
	}
	counts := must[map[string]int64](t)(s.CountImagesByOwner(ctx))
	if made != quota || counts["ada@example.com"] != quota || counts["bob@example.com"] != 1 || len(counts) != 2 {
		t.Fatalf("%d inserts passed; images by owner %v, want exactly %d of ada's and bob's one", made, counts, quota)
	}
}

// A branch counts whatever its status until its row is gone; a zero
// quota is no quota.
func TestBranchQuotaCountsWhatItShould(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	create := func(quota int) (Image, error) {
		return s.CreateImage(ctx, ImageInput{Owner: "ada@example.com", FromSnapshot: true, BranchQuota: quota})
	}
	a := must[Image](t)(create(2))
	b := must[Image](t)(create(2))
	if err := s.SetImageStatus(ctx, a.ID, ImageFailed, "broken"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetImageStatus(ctx, b.ID, ImageDestroying, ""); err != nil {
		t.Fatal(err)
	}
	var qerr *QuotaError
	if _, err := create(2); !errors.As(err, &qerr) || qerr.Quota != QuotaBranches || qerr.Count != 2 || qerr.Limit != 2 {
		t.Fatalf("a third branch at a quota of 2 (one failed, one being destroyed): %v", err)
	}
	if err := s.DeleteImage(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	must[Image](t)(create(2))
	must[Image](t)(create(0))
	if n := must[map[string]int64](t)(s.CountImagesByOwner(ctx))["ada@example.com"]; n != 3 {
		t.Fatalf("ada has %d images, want 3", n)
	}
}
