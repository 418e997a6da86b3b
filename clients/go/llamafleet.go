// Package llamafleet is a small typed Go client for the four llamafleet services (data,
// training, rollout, reward). It wraps the generated stubs in gen/ with what every caller
// needs: a deadline on every call, the bearer token, and errors that carry the service's
// google.rpc details (ErrorInfo reason, BadRequest field violations).
//
// Written for Debian's grpc-go 1.33 (grpc.DialContext + WithInsecure; there is no
// grpc.NewClient there).
package llamafleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	datav1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/data/v1"
	rewardv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/reward/v1"
	rolloutv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/rollout/v1"
	trainingv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/training/v1"
)

// Addresses are host:port of each service; empty ones are not dialled.
type Addresses struct {
	Data, Training, Rollout, Reward string
}

// Options configure a Client.
type Options struct {
	Token   string        // bearer token, sent as "authorization: Bearer <token>"
	TLS     *tls.Config   // nil: plaintext (loopback only)
	Timeout time.Duration // per-call deadline for unary calls; 0 means 30s
}

// TLSConfig builds the TLS configuration of a client from PEM files: the CA the services'
// certificates chain to ("" trusts the system's roots) and, for services that require one
// (mutual TLS), this client's certificate and key (both or neither).
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("llamafleet: TLS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("llamafleet: TLS CA %s holds no PEM certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("llamafleet: TLS client certificate: set both the certificate and the key, or neither")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("llamafleet: TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// OptionsFromEnv reads what the Python client and the CLI read: LLAMAFLEET_TOKEN, and
// LLAMAFLEET_TLS_CA / LLAMAFLEET_TLS_CERT / LLAMAFLEET_TLS_KEY (TLS when the CA or a
// certificate is set; plaintext otherwise).
func OptionsFromEnv() (Options, error) {
	opts := Options{Token: os.Getenv("LLAMAFLEET_TOKEN")}
	ca, cert, key := os.Getenv("LLAMAFLEET_TLS_CA"), os.Getenv("LLAMAFLEET_TLS_CERT"), os.Getenv("LLAMAFLEET_TLS_KEY")
	if ca == "" && cert == "" && key == "" {
		return opts, nil
	}
	cfg, err := TLSConfig(ca, cert, key)
	if err != nil {
		return Options{}, err
	}
	opts.TLS = cfg
	return opts, nil
}

// Client holds one connection per service.
type Client struct {
	Data     datav1.DataServiceClient
	Training trainingv1.TrainingServiceClient
	Rollout  rolloutv1.RolloutServiceClient
	Reward   rewardv1.RewardServiceClient

	timeout time.Duration
	conns   []*grpc.ClientConn
}

type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Dial connects to every service named in addrs and waits until each connection is up or ctx
// ends.
func Dial(ctx context.Context, addrs Addresses, opts Options) (*Client, error) {
	c := &Client{timeout: opts.Timeout}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	dialOpts := []grpc.DialOption{grpc.WithBlock()}
	if opts.TLS != nil {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)))
	} else {
		dialOpts = append(dialOpts, grpc.WithInsecure())
	}
	if opts.Token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearer{opts.Token, opts.TLS != nil}))
	}
	dial := func(name, addr string) (*grpc.ClientConn, error) {
		conn, err := grpc.DialContext(ctx, addr, dialOpts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("llamafleet: dial %s service at %s: %w", name, addr, err)
		}
		c.conns = append(c.conns, conn)
		return conn, nil
	}
	if addrs.Data != "" {
		conn, err := dial("data", addrs.Data)
		if err != nil {
			return nil, err
		}
		c.Data = datav1.NewDataServiceClient(conn)
	}
	if addrs.Training != "" {
		conn, err := dial("training", addrs.Training)
		if err != nil {
			return nil, err
		}
		c.Training = trainingv1.NewTrainingServiceClient(conn)
	}
	if addrs.Rollout != "" {
		conn, err := dial("rollout", addrs.Rollout)
		if err != nil {
			return nil, err
		}
		c.Rollout = rolloutv1.NewRolloutServiceClient(conn)
	}
	if addrs.Reward != "" {
		conn, err := dial("reward", addrs.Reward)
		if err != nil {
			return nil, err
		}
		c.Reward = rewardv1.NewRewardServiceClient(conn)
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() {
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

func (c *Client) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// FieldViolation is one bad field of a request, as the service reported it.
type FieldViolation struct {
	Field, Description string
}

// Error is a failed call with the service's structured details.
type Error struct {
	Code       codes.Code
	Message    string
	Reason     string // ErrorInfo.reason, e.g. "DATASET_NOT_FOUND"
	Violations []FieldViolation
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Code, e.Message)
	for _, v := range e.Violations {
		fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
	}
	return b.String()
}

// AsError converts a gRPC error into *Error (nil stays nil; io.EOF is returned unchanged).
func AsError(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	out := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch detail := d.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = detail.GetReason()
		case *errdetails.BadRequest:
			for _, v := range detail.GetFieldViolations() {
				out.Violations = append(out.Violations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		}
	}
	return out
}

// PreviewExample renders one record the way the data service would train on it.
func (c *Client) PreviewExample(ctx context.Context, req *datav1.PreviewExampleRequest) (*datav1.PreviewExampleResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Data.PreviewExample(ctx, req)
	return resp, AsError(err)
}

// PrepareDataset materialises a tokenized, packed dataset.
func (c *Client) PrepareDataset(ctx context.Context, req *datav1.PrepareDatasetRequest) (*datav1.PrepareDatasetResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Data.PrepareDataset(ctx, req)
	return resp, AsError(err)
}

// CreateTrainingJob submits a job.
func (c *Client) CreateTrainingJob(ctx context.Context, req *trainingv1.CreateTrainingJobRequest) (*trainingv1.CreateTrainingJobResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Training.CreateTrainingJob(ctx, req)
	return resp, AsError(err)
}

// GetTrainingJob reads a job.
func (c *Client) GetTrainingJob(ctx context.Context, req *trainingv1.GetTrainingJobRequest) (*trainingv1.GetTrainingJobResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Training.GetTrainingJob(ctx, req)
	return resp, AsError(err)
}

// WatchTrainingJob calls fn for each event until the job ends, fn returns an error, or ctx
// ends. Streams take the caller's ctx as their deadline (a job can run for hours).
func (c *Client) WatchTrainingJob(ctx context.Context, req *trainingv1.WatchTrainingJobRequest, fn func(*trainingv1.TrainingEvent) error) error {
	stream, err := c.Training.WatchTrainingJob(ctx, req)
	if err != nil {
		return AsError(err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return AsError(err)
		}
		if err := fn(resp.GetEvent()); err != nil {
			return err
		}
	}
}

// Generate streams a completion; fn sees each response (token deltas, then the finish).
func (c *Client) Generate(ctx context.Context, req *rolloutv1.GenerateRequest, fn func(*rolloutv1.GenerateResponse) error) error {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	stream, err := c.Rollout.Generate(ctx, req)
	if err != nil {
		return AsError(err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return AsError(err)
		}
		if err := fn(resp); err != nil {
			return err
		}
	}
}

// ScoreRollouts scores (prompt, completion) items.
func (c *Client) ScoreRollouts(ctx context.Context, req *rewardv1.ScoreRolloutsRequest) (*rewardv1.ScoreRolloutsResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Reward.ScoreRollouts(ctx, req)
	return resp, AsError(err)
}

// ListRewardFunctions lists the reward functions the reward service offers.
func (c *Client) ListRewardFunctions(ctx context.Context, req *rewardv1.ListRewardFunctionsRequest) (*rewardv1.ListRewardFunctionsResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Reward.ListRewardFunctions(ctx, req)
	return resp, AsError(err)
}

// TestRewardFunction scores one item with reward functions (no job, no normalisation).
func (c *Client) TestRewardFunction(ctx context.Context, req *rewardv1.TestRewardFunctionRequest) (*rewardv1.TestRewardFunctionResponse, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.Reward.TestRewardFunction(ctx, req)
	return resp, AsError(err)
}
