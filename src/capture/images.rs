//! `images:<dir>`: loops over the PNG and JPEG files of a folder (sorted by name) at the
//! configured frame rate, as if they came from a camera.

use std::path::{Path, PathBuf};

use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::config::CameraConfig;
use crate::control::clock;
use crate::preprocess;

pub struct ImageFolderSource {
    dir: PathBuf,
    period_ns: u64,
    files: Vec<PathBuf>,
    next_frame_number: u64,
    start_ns: u64,
    stats: CaptureStats,
}

impl ImageFolderSource {
    /// `dir` is the part after `images:`; the folder is read by [`FrameSource::start`].
    pub fn new(dir: &Path, config: &CameraConfig) -> Result<Self, CaptureError> {
        if config.fps == 0 {
            return Err(CaptureError::Config {
                source_name: format!("images:{}", dir.display()),
                message: "camera.fps must be > 0".into(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            period_ns: 1_000_000_000 / u64::from(config.fps),
            files: Vec::new(),
            next_frame_number: 0,
            start_ns: 0,
            stats: CaptureStats::default(),
        })
    }

    fn source_name(&self) -> String {
        format!("images:{}", self.dir.display())
    }

    /// The image files of the folder, sorted by name.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

impl FrameSource for ImageFolderSource {
    fn start(&mut self) -> Result<(), CaptureError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CaptureError::DeviceMissing {
                    source_name: self.source_name(),
                }
            } else {
                CaptureError::Io {
                    source_name: self.source_name(),
                    message: e.to_string(),
                }
            }
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CaptureError::Config {
                source_name: self.source_name(),
                message: "no .png, .jpg or .jpeg files in the folder".into(),
            });
        }
        self.files = files;
        self.next_frame_number = 0;
        self.start_ns = clock::monotonic_ns();
        Ok(())
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        if self.files.is_empty() {
            return Err(CaptureError::Config {
                source_name: self.source_name(),
                message: "next_frame called before start".into(),
            });
        }
        let n = self.next_frame_number;
        self.next_frame_number += 1;
        let due = self.start_ns + n * self.period_ns;
        let now = clock::monotonic_ns();
        if now > due + self.period_ns {
            // Fell behind (the consumer started late): restart the schedule instead of
            // producing a burst of frames.
            self.start_ns = now - n * self.period_ns;
        } else {
            clock::sleep_until_monotonic(due);
        }
        let path = &self.files[(n % self.files.len() as u64) as usize];
        match preprocess::load_image(path) {
            Ok(image) => {
                frame.image = image;
                frame.capture_time_ns = clock::realtime_ns();
                frame.sequence = n;
                self.stats.frames += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.corrupt += 1;
                Err(CaptureError::Corrupt {
                    source_name: self.source_name(),
                    message: e.to_string(),
                })
            }
        }
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }

    fn stop(&mut self) {}

    fn describe(&self) -> String {
        format!(
            "{} ({} files @{} fps)",
            self.source_name(),
            self.files.len(),
            1_000_000_000 / self.period_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vla-rt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_folder_is_named() {
        let mut source =
            ImageFolderSource::new(Path::new("/nonexistent/frames"), &CameraConfig::default())
                .unwrap();
        let err = source.start().unwrap_err();
        assert!(matches!(err, CaptureError::DeviceMissing { .. }));
        assert!(
            err.to_string().contains("images:/nonexistent/frames"),
            "{err}"
        );
    }

    #[test]
    fn folder_without_images_is_refused() {
        let dir = temp_dir("no-images");
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let mut source = ImageFolderSource::new(&dir, &CameraConfig::default()).unwrap();
        let err = source.start().unwrap_err();
        assert!(err.to_string().contains("no .png, .jpg or .jpeg"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lists_image_files_in_name_order() {
        let dir = temp_dir("listing");
        for name in ["b.PNG", "a.jpg", "c.jpeg", "d.txt"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let mut source = ImageFolderSource::new(&dir, &CameraConfig::default()).unwrap();
        source.start().unwrap();
        let names: Vec<_> = source
            .files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "c.jpeg"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loops_over_the_images_in_order() {
        let dir = temp_dir("loop");
        for (name, shade) in [("a.png", 10u8), ("b.png", 200u8)] {
            image::RgbImage::from_pixel(4, 3, image::Rgb([shade, shade, shade]))
                .save(dir.join(name))
                .unwrap();
        }
        let camera = CameraConfig {
            fps: 1000,
            ..CameraConfig::default()
        };
        let mut source = ImageFolderSource::new(&dir, &camera).unwrap();
        source.start().unwrap();
        let mut frame = Frame::default();
        let mut shades = Vec::new();
        for n in 0..3 {
            source.next_frame(&mut frame).unwrap();
            assert_eq!(frame.sequence, n);
            assert_eq!((frame.image.width, frame.image.height), (4, 3));
            assert!(frame.capture_time_ns > 0);
            shades.push(frame.image.data[0]);
        }
        assert_eq!(shades, [10, 200, 10]);
        assert_eq!(source.stats().frames, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
