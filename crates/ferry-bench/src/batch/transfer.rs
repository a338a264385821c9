//! `batch transfer`: one file put by Ferry's SFTP and S3 locations,
//! beside OpenSSH's `sftp` client putting the same file to the same
//! (private, loopback) sshd, and boto3's `upload_file` to the same moto
//! S3 server.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_batch::location::{open, LocationConfig};
use ferry_testkit::s3::S3TestBucket;
use ferry_testkit::sftp::PrivateSshd;

use super::export::tempdir;
use crate::report::{ratio, Figure, Tsv};

/// `batch transfer`.
#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// The file's size in MiB (random bytes).
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Skip S3 (moto).
    #[arg(long)]
    pub no_s3: bool,
}

pub async fn run(args: &TransferArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let result = inner(args, &dir, tsv).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn inner(args: &TransferArgs, dir: &Path, tsv: &Tsv) -> anyhow::Result<()> {
    let file = dir.join("payload.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..args.mib {
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut block);
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let bytes = args.mib << 20;

    // SFTP.
    let sshd = tokio::task::spawn_blocking(PrivateSshd::start).await?;
    let root = sshd.root();
    let batch = format!(
        "put {} {}\n",
        file.display(),
        root.join("baseline.bin").display()
    );
    let start = Instant::now();
    let mut child = tokio::process::Command::new("sftp")
        .args(["-q", "-b", "-", "-i"])
        .arg(sshd.client_key())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            sshd.known_hosts().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-P",
        ])
        .arg(sshd.port().to_string())
        .arg(format!("{}@{}", sshd.user(), sshd.host()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run sftp")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(batch.as_bytes()).await?;
    }
    let status = child.wait().await?;
    let baseline = start.elapsed();
    anyhow::ensure!(status.success(), "sftp failed: {status}");
    let config = LocationConfig {
        private_key: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..LocationConfig::new(format!(
            "sftp://{}@{}:{}{}",
            sshd.user(),
            sshd.host(),
            sshd.port(),
            root.display()
        ))
    };
    let ferry = put(&config, &file).await?;
    anyhow::ensure!(
        std::fs::metadata(root.join("ferry.bin"))?.len() == bytes,
        "the SFTP copy has the wrong size"
    );
    report(tsv, "sftp", "openssh_sftp_put", bytes, ferry, baseline)?;
    drop(sshd);

    if args.no_s3 {
        return Ok(());
    }
    // S3 (moto).
    let bucket = S3TestBucket::create().await;
    let script = format!(
        "import boto3, sys\n\
         s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='ferry', aws_secret_access_key='ferry')\n\
         s3.upload_file(sys.argv[1], '{}', 'baseline.bin')\n",
        bucket.endpoint, bucket.bucket
    );
    let start = Instant::now();
    let status = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run python3 (boto3)")?;
    let baseline = start.elapsed();
    anyhow::ensure!(status.success(), "boto3 upload failed: {status}");
    let config = LocationConfig {
        endpoint: Some(bucket.endpoint.clone()),
        region: Some("us-east-1".to_owned()),
        access_key_id: Some("ferry".to_owned()),
        secret_access_key: Some("ferry".to_owned()),
        allow_http: true,
        ..LocationConfig::new(format!("s3://{}/bench", bucket.bucket))
    };
    let ferry = put(&config, &file).await?;
    report(tsv, "s3", "boto3_upload_file", bytes, ferry, baseline)
}

/// Opens the location and puts the file as `ferry.bin`; how long the put
/// took (connecting included, as the baseline's does).
async fn put(config: &LocationConfig, file: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let location = open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    location
        .put_file(file, "ferry.bin")
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    Ok(start.elapsed())
}

fn report(
    tsv: &Tsv,
    what: &str,
    baseline_name: &str,
    bytes: u64,
    ferry: Duration,
    baseline: Duration,
) -> anyhow::Result<()> {
    let mb = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let (f, b) = (mb(ferry), mb(baseline));
    println!(
        "transfer {what}: {f:.1} MB/s ({:.1} MiB in {:.2} s)  |  baseline {baseline_name}: {b:.1} MB/s ({:.2} s)  |  ratio {}",
        bytes as f64 / (1 << 20) as f64,
        ferry.as_secs_f64(),
        baseline.as_secs_f64(),
        ratio(f, b)
    );
    tsv.append(&Figure {
        command: "batch",
        database: "none".to_owned(),
        server: String::new(),
        sink: what.to_owned(),
        figure: format!("batch_transfer_{what}"),
        run: 1,
        value: f,
        unit: "MB/s",
        baseline: baseline_name.to_owned(),
        baseline_value: Some(b),
        settings: format!("bytes={bytes}"),
        notes: String::new(),
    })
}
