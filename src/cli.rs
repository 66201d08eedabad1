//! The command line: argument parsing, output and exit codes.
//!
//! Exit codes: 0 done; 1 the environment got in the way (repository state, locks, disk);
//! 2 bad input (arguments, names, files); 76 recorded but not on the remote (`push`, `--push`);
//! `run` adds the build's own codes, 75 and 127 (see [`crate::run`]). Results go to stdout (`--json` for machines),
//! warnings and errors to stderr as `error: …` with a `hint: …` line when there is an obvious fix.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use git2::Repository;

use crate::error::{Error, Result};
use crate::list;
use crate::names::{EvidenceRoot, Kind, Template};
use crate::proof::{self, Fact, Status};
use crate::record::{self, RecordRequest, Recorded};
use crate::redact;
use crate::render;
use crate::review;
use crate::run::{self, RunReport, RunRequest};
use crate::verify;

/// Proof of infrastructure builds, committed into git.
#[derive(Debug, Parser)]
#[command(name = "git-evidence", version, about, propagate_version = true)]
pub struct Cli {
    /// Run as if started in PATH (like `git -C`).
    #[arg(
        short = 'C',
        value_name = "PATH",
        global = true,
        help_heading = "Global options"
    )]
    pub chdir: Option<PathBuf>,
    /// Print nothing but errors (and --json output).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// Say more about what happens; twice for even more.
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record one finished run (a log file and an exit code) as evidence.
    Record(RecordArgs),
    /// Run a Packer build, capture its complete log and facts, and record it as evidence.
    Run(RunArgs),
    /// List recorded runs, newest first (read-only).
    List(ListArgs),
    /// Show one run: its README.md and the commit that recorded it (read-only).
    Show(ShowArgs),
    /// Check evidence in the tree and its history: hashes, proofs, links, trailers (read-only).
    Verify(VerifyArgs),
    /// What a range (a pull request) adds: new runs, `latest` moves, verify (read-only).
    Review(ReviewArgs),
    /// Push the evidence branch and failed runs to a remote, replaying onto what other hosts
    /// pushed meanwhile.
    #[command(
        after_help = "Exit codes: 0 everything is on the remote (also when there was \
        nothing to send); 76 not pushed: the evidence stays committed locally, run this again \
        later; 2 bad input; 1 the local repository got in the way."
    )]
    Push(PushArgs),
    /// Make `git fetch` bring failed runs too: adds +refs/evidence/*:refs/evidence/* to the
    /// remote's fetch refspecs.
    Setup(SetupArgs),
    /// Run as git hook NAME (pre-receive, pre-push, pre-commit): reads what git passes hooks.
    Hook(crate::hooks::HookArgs),
    /// Manage the git hooks: `hooks install [--server] [--force]`.
    Hooks(crate::hooks::HooksArgs),
}

/// Arguments of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Remote name or URL [default: `git config evidence.remote`, else the branch's upstream
    /// remote, else origin].
    #[arg(value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Branch to push; the current branch by default.
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
    #[command(flatten)]
    pub budget: PushBudgetArgs,
}

/// How hard a push tries, shared by `push`, `record --push` and `run --push`.
#[derive(Debug, Args)]
pub struct PushBudgetArgs {
    /// Push rounds before giving up [default: `git config evidence.pushAttempts`, else 100].
    #[arg(long = "push-attempts", alias = "attempts", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: Option<u32>,
    /// Time before giving up: 90s, 5m [default: `git config evidence.pushTimeout`, else 2m].
    #[arg(long = "push-timeout", alias = "timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// Arguments of `setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The remote whose fetch refspecs to extend [default: as for push].
    #[arg(value_name = "REMOTE")]
    pub remote: Option<String>,
}

/// Arguments of `review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The range to review, e.g. origin/main..HEAD (A.. means A..HEAD).
    #[arg(value_name = "A..B")]
    pub range: String,
    /// Output format; --json is the same as --format json.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: ReviewFormat,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
}

/// Output formats of `review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReviewFormat {
    Markdown,
    Json,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// REV checks the tree at REV; A..B also checks history A..B. Default: the tree at HEAD
    /// and all of HEAD's first-parent history.
    #[arg(value_name = "REV|A..B")]
    pub rev: Option<String>,
    /// Also check every failed or cancelled run under refs/evidence/failed/.
    #[arg(long)]
    pub failed: bool,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs of this template (`init` for plugin installs).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// Also list failed and cancelled runs (refs/evidence/failed/*).
    #[arg(long)]
    pub failed: bool,
    /// Only runs started at or after DATE (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Branch to read; the current branch by default.
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
}

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// TEMPLATE or TEMPLATE@RUN (`init`, `init@RUN`); the run `latest` points at by default.
    #[arg(value_name = "TEMPLATE[@RUN]")]
    pub run: String,
    /// Branch to read; the current branch by default.
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub filing: FilingArgs,
    /// Command run after a successful build (with EVIDENCE_VMID, EVIDENCE_NODE, EVIDENCE_FACTS
    /// set); its output is appended to the log, and its failure fails the run.
    #[arg(long, value_name = "CMD")]
    pub validate: Option<String>,
    /// Files that went into the build (autoinstall user-data, kickstart, Autounattend.xml),
    /// listed in proof.json with their SHA-256. Repeatable.
    #[arg(long = "asset", value_name = "GLOB")]
    pub assets: Vec<String>,
    /// Packer's manifest post-processor file [default: packer-manifest.json].
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// Proxmox node the build ran on (also PROXMOX_NODE).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// After a forwarded SIGINT/SIGTERM/SIGHUP, how long the build may take to clean up
    /// before it is killed: 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Also keep a copy of the captured log in DIR.
    #[arg(long, value_name = "DIR")]
    pub keep_log: Option<PathBuf>,
    /// The command to run, after `--`: e.g. -- packer build -only=proxmox-iso.ubuntu .
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// Where a run is filed and what is known about it, shared by `record` and `run`.
#[derive(Debug, Args)]
pub struct FilingArgs {
    /// Template name: 1-64 of a-z 0-9 . _ -, not `latest`. Required for builds.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// What ran: a template build or `packer init`.
    #[arg(long, value_enum, default_value = "build")]
    pub kind: KindArg,
    /// A fact about the run, KEY=VALUE; `vmid` and `node` have fields of their own. Repeatable.
    #[arg(long = "fact", value_name = "KEY=VALUE")]
    pub facts: Vec<String>,
    /// Branch to record onto; the current branch by default.
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
    /// Add a Signed-off-by trailer of the committer (default: `git config evidence.signoff`).
    #[arg(long)]
    pub signoff: bool,
    /// Redact the value of this environment variable wherever it appears, whatever its name.
    /// Repeatable.
    #[arg(long = "redact-env", value_name = "NAME")]
    pub redact_env: Vec<String>,
    /// Redact every line of FILE (one secret per line) wherever it appears. Repeatable.
    #[arg(long = "redact-file", value_name = "FILE")]
    pub redact_files: Vec<PathBuf>,
    /// After recording, push to REMOTE (default: `git config evidence.remote`, the branch's
    /// upstream remote, else origin). Exit code 76 when the push fails: the evidence stays
    /// committed locally; `git evidence push` delivers it later.
    #[arg(long, value_name = "REMOTE", num_args = 0..=1, default_missing_value = "", require_equals = false)]
    pub push: Option<String>,
    #[command(flatten)]
    pub push_budget: PushBudgetArgs,
}

impl FilingArgs {
    fn redaction(&self) -> redact::Sources {
        redact::Sources {
            redact_env: self.redact_env.clone(),
            redact_files: self.redact_files.clone(),
            expressions: Vec::new(),
        }
    }
}

fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    crate::push::parse_duration(text)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Build,
    Init,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Success,
    Failed,
    Cancelled,
}

/// Arguments of `record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filing: FilingArgs,
    /// The run's complete log; stored byte for byte.
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// The run's exit code: 0 records a success on the branch, anything else a failed run.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub exit_code: i32,
    /// Override the status the exit code implies (e.g. `cancelled` for an interrupted build).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// When the run started (RFC 3339); now by default. Names the run folder.
    #[arg(long, value_name = "RFC3339")]
    pub started_at: Option<String>,
    /// When the run finished (RFC 3339); unknown by default.
    #[arg(long, value_name = "RFC3339")]
    pub finished_at: Option<String>,
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::tune_libgit2();
    init_logging(&cli);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            e.exit_code()
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn report_error(e: &Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {e}");
    if let Some(hint) = e.hint() {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

fn run(cli: &Cli) -> Result<i32> {
    if let Some(dir) = &cli.chdir {
        std::env::set_current_dir(dir).map_err(|source| Error::ChangeDir {
            path: dir.clone(),
            source,
        })?;
    }
    match &cli.command {
        Command::Record(args) => {
            let req = record_request(args)?;
            let repo = open_repo()?;
            preflight_push(&repo, &args.filing)?;
            let recorded = record::record(&repo, &req)?;
            let pushed = args.filing.push.as_ref().map(|remote| {
                if !cli.json {
                    print_recorded(cli, &recorded, None);
                }
                push_after(&repo, remote, &recorded, &args.filing.push_budget)
            });
            match &pushed {
                Some(p) if !cli.json => print_push(cli, p, false),
                _ => print_recorded(cli, &recorded, pushed.as_ref()),
            }
            // Recorded is recorded: whatever stopped the push, the code says "not pushed".
            match &pushed {
                Some(Err(_)) => Ok(crate::push::EXIT_NOT_PUSHED),
                _ => Ok(0),
            }
        }
        Command::Run(args) => {
            let req = run_request(cli, args)?;
            let repo = open_repo()?;
            preflight_push(&repo, &args.filing)?;
            let (report, validation_code) = match run::run(&repo, &req) {
                Ok(r) => r,
                Err(e @ Error::Spawn { .. }) => {
                    report_error(&e);
                    return Ok(run::EXIT_NOT_STARTED);
                }
                Err(e) => return Err(e),
            };
            let pushed = match (&args.filing.push, &report.recorded) {
                (Some(remote), Ok(recorded)) => {
                    if !cli.json {
                        print_run(cli, &report, None);
                    }
                    Some(push_after(
                        &repo,
                        remote,
                        recorded,
                        &args.filing.push_budget,
                    ))
                }
                _ => None,
            };
            match &pushed {
                Some(p) if !cli.json => print_push(cli, p, false),
                _ => print_run(cli, &report, pushed.as_ref()),
            }
            let code = report.exit_code(validation_code);
            Ok(match &pushed {
                // A build that succeeded but did not travel says so; a failed build keeps its code.
                Some(Err(_)) if code == 0 => crate::push::EXIT_NOT_PUSHED,
                _ => code,
            })
        }
        Command::Push(args) => {
            let repo = open_repo()?;
            if let Some(name) = &args.branch {
                // A typo in a timer's command line must not report "up to date" forever.
                let full = record::resolve_branch(&repo, Some(name))?;
                let failed_runs = repo
                    .references_glob("refs/evidence/failed/*")
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(false);
                if repo.find_reference(&full).is_err() && !failed_runs {
                    return Err(Error::Inconsistent(format!(
                        "there is no branch {name:?} here, and no failed runs: nothing to push"
                    )));
                }
            }
            let req = crate::push::PushRequest {
                remote: args.remote.clone(),
                branch: args.branch.clone(),
                root: args.root.as_deref().map(str::parse).transpose()?,
                attempts: args.budget.attempts,
                timeout: args.budget.timeout,
            };
            let result = crate::push::push(&repo, &req);
            print_push(cli, &result, true);
            Ok(match &result {
                Ok(_) => 0,
                Err(failed) => failed.error.exit_code(),
            })
        }
        Command::Setup(args) => {
            let repo = open_repo()?;
            let outcome = crate::push::setup(&repo, args.remote.as_deref())?;
            let mut out = std::io::stdout().lock();
            if cli.json {
                let _ = writeln!(out, "{:#}", serde_json::json!(outcome));
            } else if !cli.quiet {
                if outcome.added {
                    let _ = writeln!(
                        out,
                        "Added {} to remote.{}.fetch: `git fetch {}` now brings failed runs (refs/evidence/failed/*)",
                        outcome.refspec, outcome.remote, outcome.remote
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "remote.{}.fetch already has {}: nothing changed",
                        outcome.remote, outcome.refspec
                    );
                }
            }
            let local_failed = repo
                .references_glob("refs/evidence/failed/*")
                .map(|refs| refs.count())
                .unwrap_or(0);
            if local_failed > 0 && !cli.quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: this repository has {local_failed} failed-run ref(s): a fetch now replaces local \
                     failed runs of the same name, and a pruning fetch deletes those the remote lacks; \
                     on a build host, push them first (git evidence push)"
                );
            }
            Ok(0)
        }
        Command::List(args) => {
            let req = list::ListRequest {
                template: args.template.clone(),
                failed: args.failed,
                since: args.since.as_deref().map(list::parse_since).transpose()?,
                branch: args.branch.clone(),
                root: args.root.as_deref().map(str::parse).transpose()?,
            };
            let repo = open_repo()?;
            print_list(cli, &list::list(&repo, &req)?);
            Ok(0)
        }
        Command::Show(args) => {
            let req = list::ShowRequest {
                spec: args.run.clone(),
                branch: args.branch.clone(),
                root: args.root.as_deref().map(str::parse).transpose()?,
            };
            let repo = open_repo()?;
            print_show(cli, &list::show(&repo, &req)?);
            Ok(0)
        }
        Command::Verify(args) => {
            // Exit 2 for anything that stops verification; 1 is reserved for problems found.
            let verified = (|| {
                let req = verify::Request {
                    rev: args.rev.clone(),
                    failed: args.failed,
                    root: args.root.as_deref().map(str::parse).transpose()?,
                };
                verify::verify(&open_repo()?, &req)
            })();
            match verified {
                Ok(report) => {
                    print_verify(cli, &report);
                    Ok(if report.ok() { 0 } else { 1 })
                }
                Err(e) => {
                    report_error(&e);
                    Ok(2)
                }
            }
        }
        Command::Review(args) => {
            // Like verify: 1 is problems found (the report is still printed), 2 could not run.
            let reviewed = (|| {
                let req = review::Request {
                    range: args.range.clone(),
                    root: args.root.as_deref().map(str::parse).transpose()?,
                };
                review::review(&open_repo()?, &req)
            })();
            match reviewed {
                Ok(r) => {
                    let mut out = std::io::stdout().lock();
                    if cli.json || args.format == ReviewFormat::Json {
                        let _ = writeln!(out, "{:#}", r.to_json());
                    } else {
                        let _ = write!(out, "{}", r.markdown());
                    }
                    Ok(if r.ok() { 0 } else { 1 })
                }
                Err(e) => {
                    report_error(&e);
                    Ok(2)
                }
            }
        }
        Command::Hook(args) => crate::hooks::run_hook(args),
        Command::Hooks(args) => match &args.command {
            crate::hooks::HooksCommand::Install { server, force } => {
                crate::hooks::install(&open_repo()?, *server, *force, cli.quiet)
            }
        },
    }
}

/// Opens the repository the way git does: `GIT_DIR`, else discovery from the current directory.
pub fn open_repo() -> Result<Repository> {
    Repository::open_from_env().map_err(|source| Error::NotARepository {
        path: std::env::current_dir().unwrap_or_default(),
        source,
    })
}

/// `FilingArgs`, validated.
struct Filing {
    kind: Kind,
    template: Option<Template>,
    facts: Vec<Fact>,
    root: Option<EvidenceRoot>,
}

fn filing(args: &FilingArgs) -> Result<Filing> {
    let kind = match args.kind {
        KindArg::Build => Kind::Build,
        KindArg::Init => Kind::Init,
    };
    let template = match (kind, &args.template) {
        (Kind::Build, Some(name)) => Some(name.parse::<Template>()?),
        (Kind::Build, None) => {
            return Err(Error::Inconsistent("a build needs --template NAME".into()));
        }
        (Kind::Init, Some(_)) => {
            return Err(Error::Inconsistent(
                "--kind init takes no --template: plugin installs are not per template".into(),
            ));
        }
        (Kind::Init, None) => None,
    };
    let facts = args
        .facts
        .iter()
        .map(|f| f.parse::<Fact>())
        .collect::<Result<Vec<_>>>()?;
    let root = args
        .root
        .as_deref()
        .map(str::parse::<EvidenceRoot>)
        .transpose()?;
    Ok(Filing {
        kind,
        template,
        facts,
        root,
    })
}

fn record_request(args: &RecordArgs) -> Result<RecordRequest> {
    let Filing {
        kind,
        template,
        facts,
        root,
    } = filing(&args.filing)?;
    Ok(RecordRequest {
        kind,
        template,
        log: args.log.clone(),
        exit_code: args.exit_code,
        status: args.status.map(|s| match s {
            StatusArg::Success => Status::Success,
            StatusArg::Failed => Status::Failed,
            StatusArg::Cancelled => Status::Cancelled,
        }),
        started_at: args
            .started_at
            .as_deref()
            .map(|t| proof::parse_time("--started-at", t))
            .transpose()?,
        finished_at: args
            .finished_at
            .as_deref()
            .map(|t| proof::parse_time("--finished-at", t))
            .transpose()?,
        facts,
        branch: args.filing.branch.clone(),
        root,
        signoff: args.filing.signoff.then_some(true),
        redaction: args.filing.redaction(),
    })
}

fn run_request(cli: &Cli, args: &RunArgs) -> Result<RunRequest> {
    let Filing {
        kind,
        template,
        facts,
        root,
    } = filing(&args.filing)?;
    Ok(RunRequest {
        kind,
        template,
        argv: args.command.clone(),
        facts,
        branch: args.filing.branch.clone(),
        root,
        signoff: args.filing.signoff.then_some(true),
        validate: args.validate.clone(),
        assets: args.assets.clone(),
        manifest: args.manifest.clone(),
        node: args.node.clone(),
        grace: args.grace,
        keep_log: args.keep_log.clone(),
        show_debug: cli.verbose > 0,
        redaction: args.filing.redaction(),
    })
}

/// Fails on a `--push` that cannot work (unknown remote, bad budget) before anything runs.
fn preflight_push(repo: &Repository, filing: &FilingArgs) -> Result<()> {
    let Some(remote) = &filing.push else {
        return Ok(());
    };
    crate::push::preflight(
        repo,
        &crate::push::PushRequest {
            remote: (!remote.is_empty()).then(|| remote.clone()),
            branch: filing.branch.clone(),
            root: None,
            attempts: filing.push_budget.attempts,
            timeout: filing.push_budget.timeout,
        },
    )
}

type PushResult = std::result::Result<crate::push::Pushed, Box<crate::push::PushFailed>>;

/// Pushes what `record` or `run` just recorded, to the branch it went to.
fn push_after(
    repo: &Repository,
    remote: &str,
    recorded: &Recorded,
    budget: &PushBudgetArgs,
) -> PushResult {
    let req = crate::push::PushRequest {
        remote: (!remote.is_empty()).then(|| remote.to_owned()),
        branch: Some(recorded.branch.clone()),
        root: Some(recorded.root.clone()),
        attempts: budget.attempts,
        timeout: budget.timeout,
    };
    crate::push::push(repo, &req)
}

/// The push result as JSON: what was pushed, or why not and how to retry.
fn push_json(result: &PushResult) -> serde_json::Value {
    match result {
        Ok(p) => serde_json::json!(p),
        Err(failed) => {
            let e = &failed.error;
            let mut v = match &failed.progress {
                Some(p) => serde_json::json!(p),
                None => serde_json::json!({
                    "remote": null, "branch": null, "remote_branch": null, "commit": null,
                    "up_to_date": false, "attempts": 0, "replayed": 0, "renamed": [],
                    "failed_refs": [], "warnings": [],
                }),
            };
            v["pushed"] = false.into();
            v["commit"] = serde_json::Value::Null;
            v["error"] = e.to_string().into();
            v["exit_code"] = e.exit_code().into();
            if let Error::NotPushed { remote, retry, .. } = e {
                v["remote"] = remote.clone().into();
                v["retry"] = retry.clone().into();
            }
            if let Some(h) = e.hint() {
                v["hint"] = h.into();
            }
            v
        }
    }
}

/// Prints a push's outcome: on stdout when it landed, as an error on stderr when not. With
/// `own_json`, `--json` prints it as the command's whole output.
fn print_push(cli: &Cli, result: &PushResult, own_json: bool) {
    if let Err(failed) = result {
        report_error(&failed.error);
    }
    if cli.json {
        if own_json {
            let _ = writeln!(std::io::stdout().lock(), "{:#}", push_json(result));
        }
        return;
    }
    let Ok(p) = result else { return };
    let mut stderr = std::io::stderr().lock();
    for w in &p.warnings {
        let _ = writeln!(stderr, "warning: {w}");
    }
    drop(stderr);
    if cli.quiet {
        return;
    }
    let mut out = std::io::stdout().lock();
    let branch = p.branch.trim_start_matches("refs/heads/");
    let remote_branch = p.remote_branch.trim_start_matches("refs/heads/");
    if p.up_to_date && p.failed_refs.is_empty() {
        let _ = writeln!(
            out,
            "{} is up to date with {}/{remote_branch}",
            branch, p.remote
        );
        return;
    }
    let mut line = format!("Pushed {branch} to {}/{remote_branch}", p.remote);
    if let Some(c) = p.commit {
        line.push_str(&format!(" at {}", short(c)));
    }
    if !p.failed_refs.is_empty() {
        let n = p.failed_refs.len();
        line.push_str(&format!(
            ", with {n} failed run{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    let _ = writeln!(out, "{line}");
    if p.replayed > 0 {
        let _ = writeln!(
            out,
            "  replayed {} run{} on top of what other hosts pushed",
            p.replayed,
            if p.replayed == 1 { "" } else { "s" }
        );
    }
    for r in &p.renamed {
        let _ = writeln!(
            out,
            "  renamed {}/{} to {} (the id was taken on {})",
            r.runs, r.from, r.to, p.remote
        );
    }
    if p.attempts > 1 {
        let _ = writeln!(out, "  took {} attempts", p.attempts);
    }
}

fn short(id: git2::Oid) -> String {
    id.to_string()[..10].to_owned()
}

fn print_recorded(cli: &Cli, r: &Recorded, pushed: Option<&PushResult>) {
    let filed = &r.filed;
    let proof = &filed.proof;
    let mut stderr = std::io::stderr().lock();
    for c in &r.sync.conflicts {
        let _ = writeln!(
            stderr,
            "warning: left {} alone in {}: {}",
            c.path,
            c.worktree.display(),
            c.reason
        );
    }
    if let Some(e) = &r.sync_error {
        let _ = writeln!(
            stderr,
            "warning: the evidence is committed, but the work tree was not updated: {e}\n\
             hint: `git status` may show the new files as deleted; `git reset -q -- {}` and \
             `git checkout -- {}` bring them back",
            r.root, r.root
        );
    }
    drop(stderr);
    let mut out = std::io::stdout().lock();
    if cli.json {
        let value = serde_json::json!({
            "recorded": true,
            "status": proof.status,
            "kind": proof.kind,
            "template": proof.template,
            "run_id": proof.run_id,
            "commit": filed.commit.to_string(),
            "parent": filed.parent.map(|p| p.to_string()),
            "ref": filed.reference,
            "branch": r.branch,
            "folder": filed.folder,
            "latest_moved": filed.latest_moved,
            "attempts": filed.attempts,
            "worktrees": r.sync.worktrees,
            "conflicts": r.sync.conflicts.iter().map(|c| serde_json::json!({
                "worktree": c.worktree, "path": c.path, "reason": c.reason,
            })).collect::<Vec<_>>(),
            "proof": proof,
        });
        let mut value = value;
        if let Some(p) = pushed {
            value["push"] = push_json(p);
        }
        let _ = writeln!(out, "{value:#}");
        drop(out);
        if let Some(Err(failed)) = pushed {
            report_error(&failed.error);
        }
        return;
    }
    if cli.quiet {
        return;
    }
    let what = match &proof.template {
        Some(t) => format!("{t} {}", proof.run_id),
        None => format!("init {}", proof.run_id),
    };
    if proof.status == Status::Success {
        let branch = r.branch.trim_start_matches("refs/heads/");
        let _ = writeln!(
            out,
            "Recorded {what} on {branch} as {}",
            short(filed.commit)
        );
    } else {
        let _ = writeln!(
            out,
            "Recorded {} run {what} as {} ({}); {} is unchanged",
            proof.status,
            filed.reference,
            short(filed.commit),
            r.branch.trim_start_matches("refs/heads/")
        );
    }
    let _ = writeln!(out, "  folder  {}/", filed.folder);
    let _ = writeln!(
        out,
        "  log     {} ({} bytes, sha256 {})",
        proof.log_file, proof.log_bytes, proof.log_sha256
    );
    if filed.latest_moved {
        let _ = writeln!(out, "  latest  -> {}", proof.run_id);
    }
}

fn print_run(cli: &Cli, report: &RunReport, pushed: Option<&PushResult>) {
    let mut stderr = std::io::stderr().lock();
    for w in &report.warnings {
        let _ = writeln!(stderr, "warning: {w}");
    }
    if let Some(sig) = report.outcome.interrupted_by {
        let _ = writeln!(
            stderr,
            "git-evidence: the build was interrupted (signal {sig}) and is recorded as cancelled"
        );
    }
    if let Some(p) = &report.kept_copy {
        let _ = writeln!(
            stderr,
            "git-evidence: kept a copy of the log at {}",
            p.display()
        );
    }
    match &report.recorded {
        Ok(recorded) => {
            drop(stderr);
            print_recorded(cli, recorded, pushed);
        }
        Err(nr) => {
            let _ = writeln!(stderr, "error: the run could not be recorded: {}", nr.error);
            match &nr.kept_log {
                Some(p) => {
                    let _ = writeln!(stderr, "hint: the log is kept at {}", p.display());
                }
                None => {
                    let _ = writeln!(stderr, "hint: the log could not be kept either");
                }
            }
            let _ = writeln!(
                stderr,
                "hint: once the problem is fixed, record it with:\n  {}",
                nr.retry
            );
            if cli.json {
                let value = serde_json::json!({
                    "recorded": false,
                    "status": report.status,
                    "error": nr.error.to_string(),
                    "kept_log": nr.kept_log,
                    "retry": nr.retry,
                });
                let _ = writeln!(std::io::stdout().lock(), "{value:#}");
            }
        }
    }
}

fn print_list(cli: &Cli, runs: &[list::RunEntry]) {
    let mut out = std::io::stdout().lock();
    if cli.json {
        let value: Vec<_> = runs.iter().map(list::RunEntry::to_json).collect();
        let _ = writeln!(out, "{:#}", serde_json::Value::Array(value));
        return;
    }
    if runs.is_empty() {
        if !cli.quiet {
            let _ = writeln!(std::io::stderr(), "no runs found");
        }
        return;
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let header = [
        "TEMPLATE", "RUN", "STATUS", "DURATION", "VMID", "NODE", "LOG", "SHA256", "COMMIT",
    ];
    let rows: Vec<[String; 9]> = runs
        .iter()
        .map(|r| {
            let p = &r.proof;
            let sha = p["log_sha256"].as_str().unwrap_or("-");
            [
                r.label().to_owned(),
                r.run_id.to_string(),
                r.status().to_owned(),
                render::human_duration(p["duration_seconds"].as_f64()),
                text(&p["vmid"]),
                text(&p["node"]),
                render::human_bytes(p["log_bytes"].as_u64()),
                sha.get(..12).unwrap_or(sha).to_owned(),
                r.commit.map(short).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
}

fn print_show(cli: &Cli, shown: &list::Shown) {
    let mut out = std::io::stdout().lock();
    let entry = &shown.entry;
    if cli.json {
        let mut value = match &entry.proof {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        value.insert("commit".into(), shown.commit_id.to_string().into());
        value.insert("path".into(), entry.path.clone().into());
        if let Some(r) = &entry.reference {
            value.insert("ref".into(), r.clone().into());
        }
        let _ = writeln!(out, "{:#}", serde_json::Value::Object(value));
        return;
    }
    let _ = out.write_all(&shown.readme);
    if !shown.readme.is_empty() && !shown.readme.ends_with(b"\n") {
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "commit {}", shown.commit_id);
    if let Some(r) = &entry.reference {
        let _ = writeln!(out, "Ref:    {r}");
    }
    let _ = writeln!(out, "Path:   {}", entry.path);
    let _ = writeln!(out, "Author: {}", shown.author);
    let _ = writeln!(out, "Date:   {}", shown.date);
    let _ = writeln!(out);
    let _ = writeln!(out, "    {}", shown.subject);
}

fn print_verify(cli: &Cli, report: &verify::Report) {
    let mut out = std::io::stdout().lock();
    if cli.json {
        let value = serde_json::json!({
            "ok": report.ok(),
            "runs_checked": report.runs_checked,
            "problems": report.problems,
        });
        let _ = writeln!(out, "{value:#}");
        return;
    }
    for p in &report.problems {
        let _ = writeln!(out, "{} {}: {}", p.commit, p.path, p.problem);
    }
    if !cli.quiet || !report.ok() {
        let _ = writeln!(
            out,
            "{} runs checked, {} problems",
            report.runs_checked,
            report.problems.len()
        );
    }
}
