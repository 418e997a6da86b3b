package llamafleet

// Interop with the real Python services: `llamafleet up` on a built tiny model, then from Go:
// preview a data example, create a short LoRA SFT job, watch it to completion, and generate
// with its adapter through the rollout service. Needs LLAMAFLEET_PYTHON (the project's venv
// Python; scripts/check_go.sh sets it) and redis-server; skipped without them.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	commonv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/common/v1"
	datav1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/data/v1"
	rolloutv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/rollout/v1"
	trainingv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/training/v1"
)

type clusterFile struct {
	Services map[string]struct {
		Address string `json:"address"`
	} `json:"services"`
}

func python(t *testing.T, dir string, args ...string) {
	t.Helper()
	py := os.Getenv("LLAMAFLEET_PYTHON")
	cmd := exec.Command(py, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HF_HUB_OFFLINE=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", py, args, err, out)
	}
}

func TestInteropWithThePythonServices(t *testing.T) {
	if os.Getenv("LLAMAFLEET_PYTHON") == "" {
		t.Skip("LLAMAFLEET_PYTHON is not set (scripts/check_go.sh sets it)")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed")
	}
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny")
	runDir := filepath.Join(dir, "run")
	python(t, dir, "-m", "services.training.tiny.model", model, "--size", "tiny")
	python(t, dir, "-m", "llamafleet.cli", "up", "--run-dir", runDir, "--base-model", model)
	t.Cleanup(func() {
		exec.Command(os.Getenv("LLAMAFLEET_PYTHON"), "-m", "llamafleet.cli", "down", "--run-dir", runDir).Run()
	})

	raw, err := os.ReadFile(filepath.Join(runDir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cf clusterFile
	if err := json.Unmarshal(raw, &cf); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c, err := Dial(ctx, Addresses{
		Data: cf.Services["data"].Address, Training: cf.Services["training"].Address,
		Rollout: cf.Services["rollout"].Address, Reward: cf.Services["reward"].Address,
	}, Options{Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// 1. Preview one alpaca record: the response tokens are trained, the prompt is masked.
	// record_json, not the Struct record: the service reads the record as a dataset line (key
	// order and integers kept).
	preview, err := c.PreviewExample(ctx, &datav1.PreviewExampleRequest{
		RecordJson:   `{"instruction": "Reverse: abc", "output": "cba"}`,
		Format:       &datav1.FormatOptions{Format: datav1.DatasetFormat_DATASET_FORMAT_ALPACA},
		Tokenization: &datav1.TokenizationOptions{TokenizerPath: model},
	})
	if err != nil {
		t.Fatalf("PreviewExample: %v", err)
	}
	seq := preview.GetSequences()[0]
	if len(seq.GetTrainedTexts()) == 0 || len(seq.GetInputIds()) != len(seq.GetLabels()) {
		t.Fatalf("preview: trained %q, %d ids, %d labels", seq.GetTrainedTexts(), len(seq.GetInputIds()), len(seq.GetLabels()))
	}

	// 2. A short LoRA SFT job on a small alpaca file.
	data := filepath.Join(dir, "train.jsonl")
	f, _ := os.Create(data)
	for i := 0; i < 32; i++ {
		word := fmt.Sprintf("w%02d", i)
		line, _ := json.Marshal(map[string]string{"instruction": "Repeat: " + word, "output": word})
		f.Write(append(line, '\n'))
	}
	f.Close()
	jobID := "go-interop"
	spec := &trainingv1.TrainingJobSpec{
		JobId:     jobID,
		BaseModel: model,
		Stage:     trainingv1.Stage_STAGE_SFT,
		Dataset: &trainingv1.DatasetRef{Dataset: &trainingv1.DatasetRef_Spec{Spec: &datav1.DatasetSpec{
			Sources: []*datav1.DatasetSource{{
				Location: &datav1.DatasetSource_Files{Files: &datav1.FileSource{Paths: []string{data}}},
				Format:   &datav1.FormatOptions{Format: datav1.DatasetFormat_DATASET_FORMAT_ALPACA},
			}},
			Tokenization: &datav1.TokenizationOptions{CutoffLen: 64},
		}}},
		Finetuning: &trainingv1.FinetuningConfig{
			Type: trainingv1.FinetuningType_FINETUNING_TYPE_LORA,
			Lora: &trainingv1.LoraConfig{Rank: 4, TargetModules: []string{"q_proj", "v_proj"}},
		},
		Hyperparameters: &trainingv1.Hyperparameters{
			LearningRate: 1e-3, MaxSteps: int64Ptr(3), LoggingSteps: 1,
			BatchSize: &trainingv1.Hyperparameters_PerDeviceBatchSize{PerDeviceBatchSize: 4},
		},
	}
	if _, err := c.CreateTrainingJob(ctx, &trainingv1.CreateTrainingJobRequest{Spec: spec}); err != nil {
		t.Fatalf("CreateTrainingJob: %v", err)
	}

	// 3. Watch it to the end.
	var last *trainingv1.TrainingEvent
	steps := 0
	err = c.WatchTrainingJob(ctx, &trainingv1.WatchTrainingJobRequest{JobId: jobID},
		func(ev *trainingv1.TrainingEvent) error {
			last = ev
			if ev.GetMetrics() != nil {
				steps++
			}
			return nil
		})
	if err != nil {
		t.Fatalf("WatchTrainingJob: %v", err)
	}
	if got := last.GetStateChange().GetState(); got != trainingv1.JobState_JOB_STATE_SUCCEEDED {
		log, _ := os.ReadFile(filepath.Join(runDir, "jobs", jobID, "runner.log"))
		t.Fatalf("job ended %v after %d metric events; runner.log:\n%s", got, steps, log)
	}
	job, err := c.GetTrainingJob(ctx, &trainingv1.GetTrainingJobRequest{JobId: jobID})
	if err != nil || len(job.GetJob().GetAdapterVersions()) == 0 {
		t.Fatalf("GetTrainingJob: %v, adapters %v", err, job.GetJob().GetAdapterVersions())
	}
	version := job.GetJob().GetAdapterVersions()[len(job.GetJob().GetAdapterVersions())-1].GetVersion()

	// 4. Generate with the job's adapter (the rollout service fetches it from training).
	text, finished := "", false
	err = c.Generate(ctx, &rolloutv1.GenerateRequest{
		PromptText: "Repeat: w01",
		Adapter:    &commonv1.AdapterRef{Id: jobID, Version: version},
		Sampling:   &rolloutv1.SamplingParams{Temperature: float32Ptr(0), MaxTokens: int32Ptr(5)},
	}, func(r *rolloutv1.GenerateResponse) error {
		if tok := r.GetTokens(); tok != nil {
			text += tok.GetText()
			if len(tok.GetLogprobs()) != len(tok.GetTokenIds()) {
				return fmt.Errorf("%d logprobs for %d tokens", len(tok.GetLogprobs()), len(tok.GetTokenIds()))
			}
		}
		if fin := r.GetFinished(); fin != nil {
			finished = fin.GetAdapterVersion() == version
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if !finished || text == "" {
		t.Fatalf("generation with %s@%d: finished=%v text=%q", jobID, version, finished, text)
	}
}

func int64Ptr(v int64) *int64       { return &v }
func int32Ptr(v int32) *int32       { return &v }
func float32Ptr(v float32) *float32 { return &v }
