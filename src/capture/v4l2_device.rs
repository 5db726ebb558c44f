//! One V4L2 device node: capability, format and control queries, and an mmap buffer ring.
//!
//! Built on the `v4l` crate's ioctl/mmap wrappers and the kernel structs it generates,
//! rather than on its `Device`/`MmapStream` types: those panic in `Drop` when the driver
//! answers STREAMOFF or REQBUFS with anything but ENODEV, assert on `poll` results and unwrap
//! unknown control types, and a misbehaving camera must never take the controller down.
//! Everything here returns errors and its `Drop`s ignore them.

use std::ffi::CStr;
use std::io;
use std::os::raw::{c_int, c_void};
use std::time::Duration;

use v4l::v4l2;
use v4l::v4l2::vidioc;
use v4l::v4l_sys::*;

use super::CaptureError;

const CAPTURE: u32 = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
const MEMORY_MMAP: u32 = v4l2_memory_V4L2_MEMORY_MMAP;

/// A four-character pixel format code such as `YUYV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    pub const MJPG: FourCc = FourCc::from_bytes(*b"MJPG");
    pub const YUYV: FourCc = FourCc::from_bytes(*b"YUYV");
    pub const RGB3: FourCc = FourCc::from_bytes(*b"RGB3");
    pub const GREY: FourCc = FourCc::from_bytes(*b"GREY");

    pub const fn from_bytes(code: [u8; 4]) -> Self {
        FourCc(u32::from_le_bytes(code))
    }

    /// Parses a four-character code (`"YUYV"`); `None` if it is not four ASCII characters.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 4] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ')
            .then(|| FourCc::from_bytes(bytes))
    }
}

impl std::fmt::Display for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.to_le_bytes();
        for b in bytes {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What QUERYCAP reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capability {
    pub driver: String,
    pub card: String,
    pub bus_info: String,
    /// The node can capture video (single-planar) with streaming I/O.
    pub video_capture: bool,
    pub streaming: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatDescription {
    #[serde(serialize_with = "serialize_fourcc")]
    pub fourcc: FourCc,
    pub description: String,
    pub compressed: bool,
}

fn serialize_fourcc<S: serde::Serializer>(fourcc: &FourCc, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fourcc.to_string())
}

/// A frame size the device offers for a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FrameSize {
    Discrete {
        width: u32,
        height: u32,
    },
    /// Any size in the range on the step grid (continuous when the steps are 1).
    Stepwise {
        min_width: u32,
        max_width: u32,
        step_width: u32,
        min_height: u32,
        max_height: u32,
        step_height: u32,
    },
}

/// A frame interval (seconds per frame as a fraction) the device offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FrameInterval {
    Discrete {
        numerator: u32,
        denominator: u32,
    },
    Stepwise {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
}

/// The negotiated pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixFormat {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    pub bytes_per_line: u32,
    pub size_image: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlType {
    Integer,
    Boolean,
    Menu,
    IntegerMenu,
    Button,
    Integer64,
    Other,
}

/// One control as QUERYCTRL describes it, with its current value where it has one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlInfo {
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub control_type: ControlType,
    pub minimum: i64,
    pub maximum: i64,
    pub step: i64,
    pub default: i64,
    /// Set while an automatic mode owns the control.
    pub inactive: bool,
    pub read_only: bool,
    pub value: Option<i64>,
    /// Valid entries of a menu control: (index, name).
    pub menu: Vec<(u32, String)>,
}

/// errno values that mean the device is gone (unplugged, or its driver gave up on it).
pub fn is_gone(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::ESHUTDOWN)
    )
}

/// Issues `request` on `fd` with `arg`, retrying on EINTR.
///
/// # Safety
/// `T` must be the argument type that `request` is defined with.
unsafe fn ioctl_fd<T>(fd: c_int, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
    // The size is encoded in the request number; refuse a mismatch rather than let the
    // kernel write past `arg`.
    #[allow(clippy::unnecessary_cast)] // `_IOC_TYPE` is an int on some C libraries
    let encoded_size = ((request as u64 >> 16) & 0x3fff) as usize;
    if encoded_size != std::mem::size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ioctl argument size mismatch",
        ));
    }
    loop {
        // SAFETY: `arg` is a live, exclusive reference to a value of the size the request
        // encodes, and the caller guarantees it is the request's argument type.
        let result = unsafe { v4l2::ioctl(fd, request, arg as *mut T as *mut c_void) };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// An open device node. Closing it (drop) never fails loudly.
pub struct Device {
    fd: c_int,
    path: String,
}

impl Device {
    /// Opens `path` non-blocking. A path that does not exist gives `DeviceMissing`.
    pub fn open(path: &str) -> Result<Self, CaptureError> {
        if path.as_bytes().contains(&0) {
            return Err(CaptureError::Config {
                source_name: path.escape_debug().to_string(),
                message: "device path contains a NUL byte".into(),
            });
        }
        match v4l2::open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) {
            Ok(fd) => Ok(Self {
                fd,
                path: path.to_string(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(CaptureError::DeviceMissing {
                source_name: path.to_string(),
            }),
            Err(e) => Err(CaptureError::Io {
                source_name: path.to_string(),
                message: format!("cannot open: {e}"),
            }),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Maps an ioctl failure to the capture error for `what` (ENODEV and EIO: unplugged).
    pub fn error(&self, what: &str, error: io::Error) -> CaptureError {
        if is_gone(&error) {
            CaptureError::Unplugged {
                source_name: self.path.clone(),
            }
        } else {
            CaptureError::Io {
                source_name: self.path.clone(),
                message: format!("{what}: {error}"),
            }
        }
    }

    /// Issues `request` with `arg`.
    ///
    /// # Safety
    /// `T` must be the argument type that `request` is defined with.
    unsafe fn ioctl<T>(&self, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract; `self.fd` is open.
        unsafe { ioctl_fd(self.fd, request, arg) }
    }

    pub fn capability(&self) -> Result<Capability, CaptureError> {
        // SAFETY: v4l2_capability is plain data; all-zero is a valid value.
        let mut cap: v4l2_capability = unsafe { std::mem::zeroed() };
        // SAFETY: VIDIOC_QUERYCAP takes a v4l2_capability.
        unsafe { self.ioctl(vidioc::VIDIOC_QUERYCAP, &mut cap) }.map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTTY) {
                CaptureError::Config {
                    source_name: self.path.clone(),
                    message: "not a V4L2 device".into(),
                }
            } else {
                self.error("VIDIOC_QUERYCAP", e)
            }
        })?;
        let caps = if cap.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        Ok(Capability {
            driver: c_string(&cap.driver),
            card: c_string(&cap.card),
            bus_info: c_string(&cap.bus_info),
            video_capture: caps & V4L2_CAP_VIDEO_CAPTURE != 0,
            streaming: caps & V4L2_CAP_STREAMING != 0,
        })
    }

    pub fn formats(&self) -> Result<Vec<FormatDescription>, CaptureError> {
        let mut formats = Vec::new();
        for index in 0..256 {
            // SAFETY: v4l2_fmtdesc is plain data; all-zero is a valid value.
            let mut desc: v4l2_fmtdesc = unsafe { std::mem::zeroed() };
            desc.index = index;
            desc.type_ = CAPTURE;
            // SAFETY: VIDIOC_ENUM_FMT takes a v4l2_fmtdesc.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FMT, &mut desc) } {
                Ok(()) => formats.push(FormatDescription {
                    fourcc: FourCc(desc.pixelformat),
                    description: c_string(&desc.description),
                    compressed: desc.flags & V4L2_FMT_FLAG_COMPRESSED != 0,
                }),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(self.error("VIDIOC_ENUM_FMT", e)),
            }
        }
        Ok(formats)
    }

    /// Frame sizes for `fourcc`; empty if the driver does not enumerate them.
    pub fn frame_sizes(&self, fourcc: FourCc) -> Result<Vec<FrameSize>, CaptureError> {
        let mut sizes = Vec::new();
        for index in 0..256 {
            // SAFETY: v4l2_frmsizeenum is plain data; all-zero is a valid value.
            let mut size: v4l2_frmsizeenum = unsafe { std::mem::zeroed() };
            size.index = index;
            size.pixel_format = fourcc.0;
            // SAFETY: VIDIOC_ENUM_FRAMESIZES takes a v4l2_frmsizeenum.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMESIZES, &mut size) } {
                Ok(()) => {}
                Err(e) if is_gone(&e) => return Err(self.error("VIDIOC_ENUM_FRAMESIZES", e)),
                Err(_) => break,
            }
            if size.type_ == v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE {
                // SAFETY: the driver filled the `discrete` member for this type.
                let d = unsafe { size.__bindgen_anon_1.discrete };
                sizes.push(FrameSize::Discrete {
                    width: d.width,
                    height: d.height,
                });
            } else {
                // SAFETY: the driver filled the `stepwise` member for the other types.
                let s = unsafe { size.__bindgen_anon_1.stepwise };
                sizes.push(FrameSize::Stepwise {
                    min_width: s.min_width,
                    max_width: s.max_width,
                    step_width: s.step_width.max(1),
                    min_height: s.min_height,
                    max_height: s.max_height,
                    step_height: s.step_height.max(1),
                });
                break;
            }
        }
        Ok(sizes)
    }

    pub fn frame_intervals(
        &self,
        fourcc: FourCc,
        width: u32,
        height: u32,
    ) -> Result<Vec<FrameInterval>, CaptureError> {
        let mut intervals = Vec::new();
        for index in 0..256 {
            // SAFETY: v4l2_frmivalenum is plain data; all-zero is a valid value.
            let mut interval: v4l2_frmivalenum = unsafe { std::mem::zeroed() };
            interval.index = index;
            interval.pixel_format = fourcc.0;
            interval.width = width;
            interval.height = height;
            // SAFETY: VIDIOC_ENUM_FRAMEINTERVALS takes a v4l2_frmivalenum.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMEINTERVALS, &mut interval) } {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {
                    return Err(self.error("VIDIOC_ENUM_FRAMEINTERVALS", e));
                }
                Err(_) => break,
            }
            if interval.type_ == v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE {
                // SAFETY: the driver filled the `discrete` member for this type.
                let d = unsafe { interval.__bindgen_anon_1.discrete };
                intervals.push(FrameInterval::Discrete {
                    numerator: d.numerator,
                    denominator: d.denominator,
                });
            } else {
                // SAFETY: the driver filled the `stepwise` member for the other types.
                let s = unsafe { interval.__bindgen_anon_1.stepwise };
                intervals.push(FrameInterval::Stepwise {
                    min: (s.min.numerator, s.min.denominator),
                    max: (s.max.numerator, s.max.denominator),
                    step: (s.step.numerator, s.step.denominator),
                });
                break;
            }
        }
        Ok(intervals)
    }

    pub fn format(&self) -> Result<PixFormat, CaptureError> {
        // SAFETY: v4l2_format is plain data; all-zero is a valid value.
        let mut format: v4l2_format = unsafe { std::mem::zeroed() };
        format.type_ = CAPTURE;
        // SAFETY: VIDIOC_G_FMT takes a v4l2_format.
        unsafe { self.ioctl(vidioc::VIDIOC_G_FMT, &mut format) }
            .map_err(|e| self.error("VIDIOC_G_FMT", e))?;
        // SAFETY: for a capture buffer type the driver fills the `pix` member.
        let pix = unsafe { format.fmt.pix };
        Ok(PixFormat {
            fourcc: FourCc(pix.pixelformat),
            width: pix.width,
            height: pix.height,
            bytes_per_line: pix.bytesperline,
            size_image: pix.sizeimage,
        })
    }

    /// Asks for a format; returns what the driver settled on (it may adjust the request).
    pub fn set_format(
        &self,
        fourcc: FourCc,
        width: u32,
        height: u32,
    ) -> Result<PixFormat, CaptureError> {
        // SAFETY: v4l2_format is plain data; all-zero is a valid value.
        let mut format: v4l2_format = unsafe { std::mem::zeroed() };
        format.type_ = CAPTURE;
        format.fmt.pix.pixelformat = fourcc.0;
        format.fmt.pix.width = width;
        format.fmt.pix.height = height;
        format.fmt.pix.field = v4l2_field_V4L2_FIELD_NONE;
        // SAFETY: VIDIOC_S_FMT takes a v4l2_format.
        unsafe { self.ioctl(vidioc::VIDIOC_S_FMT, &mut format) }
            .map_err(|e| self.error("VIDIOC_S_FMT", e))?;
        self.format()
    }

    /// Asks for `fps` frames per second; returns the interval the driver chose as
    /// (numerator, denominator), or `None` when the driver has no frame-rate control.
    pub fn set_frame_rate(&self, fps: u32) -> Result<Option<(u32, u32)>, CaptureError> {
        // SAFETY: v4l2_streamparm is plain data; all-zero is a valid value.
        let mut parm: v4l2_streamparm = unsafe { std::mem::zeroed() };
        parm.type_ = CAPTURE;
        // SAFETY: VIDIOC_G_PARM takes a v4l2_streamparm.
        if unsafe { self.ioctl(vidioc::VIDIOC_G_PARM, &mut parm) }.is_err() {
            return Ok(None);
        }
        // SAFETY: for a capture buffer type the driver fills the `capture` member.
        if unsafe { parm.parm.capture.capability } & V4L2_CAP_TIMEPERFRAME == 0 {
            return Ok(None);
        }
        parm.parm.capture.timeperframe = v4l2_fract {
            numerator: 1,
            denominator: fps,
        };
        // SAFETY: VIDIOC_S_PARM takes a v4l2_streamparm.
        unsafe { self.ioctl(vidioc::VIDIOC_S_PARM, &mut parm) }
            .map_err(|e| self.error("VIDIOC_S_PARM", e))?;
        // SAFETY: the driver fills the `capture` member for a capture buffer type.
        let chosen = unsafe { parm.parm.capture.timeperframe };
        Ok(Some((chosen.numerator, chosen.denominator)))
    }

    /// Describes control `id`, or `None` if the device has no such control.
    pub fn query_control(&self, id: u32) -> Result<Option<ControlInfo>, CaptureError> {
        // SAFETY: v4l2_queryctrl is plain data; all-zero is a valid value.
        let mut query: v4l2_queryctrl = unsafe { std::mem::zeroed() };
        query.id = id;
        // SAFETY: VIDIOC_QUERYCTRL takes a v4l2_queryctrl.
        match unsafe { self.ioctl(vidioc::VIDIOC_QUERYCTRL, &mut query) } {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Err(self.error("VIDIOC_QUERYCTRL", e)),
            Err(_) => return Ok(None),
        }
        if query.flags & V4L2_CTRL_FLAG_DISABLED != 0 {
            return Ok(None);
        }
        self.describe_control(&query).map(Some)
    }

    /// Every control the device lists, with current values.
    pub fn controls(&self) -> Result<Vec<ControlInfo>, CaptureError> {
        let mut controls = Vec::new();
        let mut next_id = V4L2_CTRL_FLAG_NEXT_CTRL;
        for _ in 0..1024 {
            // SAFETY: v4l2_queryctrl is plain data; all-zero is a valid value.
            let mut query: v4l2_queryctrl = unsafe { std::mem::zeroed() };
            query.id = next_id;
            // SAFETY: VIDIOC_QUERYCTRL takes a v4l2_queryctrl.
            match unsafe { self.ioctl(vidioc::VIDIOC_QUERYCTRL, &mut query) } {
                Ok(()) => {}
                Err(e) if is_gone(&e) => return Err(self.error("VIDIOC_QUERYCTRL", e)),
                Err(_) => break,
            }
            next_id = query.id | V4L2_CTRL_FLAG_NEXT_CTRL;
            if query.flags & V4L2_CTRL_FLAG_DISABLED != 0
                || query.type_ == v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS
            {
                continue;
            }
            controls.push(self.describe_control(&query)?);
        }
        Ok(controls)
    }

    fn describe_control(&self, query: &v4l2_queryctrl) -> Result<ControlInfo, CaptureError> {
        let control_type = [
            (v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER, ControlType::Integer),
            (v4l2_ctrl_type_V4L2_CTRL_TYPE_BOOLEAN, ControlType::Boolean),
            (v4l2_ctrl_type_V4L2_CTRL_TYPE_MENU, ControlType::Menu),
            (
                v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER_MENU,
                ControlType::IntegerMenu,
            ),
            (v4l2_ctrl_type_V4L2_CTRL_TYPE_BUTTON, ControlType::Button),
            (
                v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER64,
                ControlType::Integer64,
            ),
        ]
        .into_iter()
        .find(|&(code, _)| code == query.type_)
        .map_or(ControlType::Other, |(_, control_type)| control_type);
        let has_value = matches!(
            control_type,
            ControlType::Integer | ControlType::Boolean | ControlType::Menu
        ) && query.flags & V4L2_CTRL_FLAG_WRITE_ONLY == 0;
        let value = if has_value {
            match self.control(query.id) {
                Ok(value) => Some(i64::from(value)),
                Err(CaptureError::Unplugged { source_name }) => {
                    return Err(CaptureError::Unplugged { source_name })
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let mut menu = Vec::new();
        if control_type == ControlType::Menu && query.maximum >= query.minimum {
            for index in query.minimum.max(0)..=query.maximum.min(255) {
                // SAFETY: v4l2_querymenu is plain data; all-zero is a valid value.
                let mut item: v4l2_querymenu = unsafe { std::mem::zeroed() };
                item.id = query.id;
                item.index = index as u32;
                // SAFETY: VIDIOC_QUERYMENU takes a v4l2_querymenu.
                if unsafe { self.ioctl(vidioc::VIDIOC_QUERYMENU, &mut item) }.is_ok() {
                    // SAFETY: for a (non-integer) menu control the driver fills `name`.
                    let name = unsafe { item.__bindgen_anon_1.name };
                    menu.push((index as u32, c_string(&name)));
                }
            }
        }
        Ok(ControlInfo {
            id: query.id,
            name: c_string(&query.name),
            control_type,
            minimum: i64::from(query.minimum),
            maximum: i64::from(query.maximum),
            step: i64::from(query.step),
            default: i64::from(query.default_value),
            inactive: query.flags & V4L2_CTRL_FLAG_INACTIVE != 0,
            read_only: query.flags & V4L2_CTRL_FLAG_READ_ONLY != 0,
            value,
            menu,
        })
    }

    pub fn control(&self, id: u32) -> Result<i32, CaptureError> {
        let mut control = v4l2_control { id, value: 0 };
        // SAFETY: VIDIOC_G_CTRL takes a v4l2_control.
        unsafe { self.ioctl(vidioc::VIDIOC_G_CTRL, &mut control) }
            .map_err(|e| self.error("VIDIOC_G_CTRL", e))?;
        Ok(control.value)
    }

    /// Sets a control; returns the value the driver stored (it may round to the step).
    pub fn set_control(&self, id: u32, value: i32) -> Result<i32, CaptureError> {
        let mut control = v4l2_control { id, value };
        // SAFETY: VIDIOC_S_CTRL takes a v4l2_control.
        unsafe { self.ioctl(vidioc::VIDIOC_S_CTRL, &mut control) }
            .map_err(|e| self.error("VIDIOC_S_CTRL", e))?;
        self.control(id)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Err(e) = v4l2::close(self.fd) {
            log::debug!("camera {}: close: {e}", self.path);
        }
    }
}

/// One dequeued buffer's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Dequeued {
    pub index: usize,
    pub bytes_used: usize,
    pub flags: u32,
    pub sequence: u32,
    /// Driver timestamp (seconds, microseconds).
    pub timestamp: (i64, i64),
}

/// Outcome of waiting for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    TimedOut,
    /// poll reported POLLERR/POLLHUP/POLLNVAL: the stream is broken (unplug, queue error).
    Broken,
}

/// Streaming buffers mapped into this process; streaming runs while it lives.
///
/// Holds a copy of the device's fd: the owning [`Device`] must outlive it (declare the ring
/// before the device in a struct so that it is dropped first).
pub struct MmapRing {
    fd: c_int,
    path: String,
    buffers: Vec<(*mut u8, usize)>,
}

// SAFETY: the ring owns its mappings exclusively; the raw pointers are never shared, and
// moving them to another thread together with the ring is sound.
unsafe impl Send for MmapRing {}

impl MmapRing {
    /// Requests `count` mmap buffers, maps and queues them all, and starts streaming.
    pub fn start(device: &Device, count: u32) -> Result<Self, CaptureError> {
        // SAFETY: v4l2_requestbuffers is plain data; all-zero is a valid value.
        let mut request: v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        request.count = count;
        request.type_ = CAPTURE;
        request.memory = MEMORY_MMAP;
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        unsafe { device.ioctl(vidioc::VIDIOC_REQBUFS, &mut request) }
            .map_err(|e| device.error("VIDIOC_REQBUFS", e))?;
        if request.count < 2 {
            return Err(CaptureError::Io {
                source_name: device.path.clone(),
                message: format!("driver granted {} buffers, need 2", request.count),
            });
        }
        let mut ring = MmapRing {
            fd: device.fd,
            path: device.path.clone(),
            buffers: Vec::with_capacity(request.count as usize),
        };
        for index in 0..request.count {
            let mut buffer = Self::buffer_desc(index);
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer.
            unsafe { device.ioctl(vidioc::VIDIOC_QUERYBUF, &mut buffer) }
                .map_err(|e| device.error("VIDIOC_QUERYBUF", e))?;
            let length = buffer.length as usize;
            // SAFETY: for MMAP memory the driver fills `m.offset`.
            let offset = unsafe { buffer.m.offset };
            // SAFETY: maps a fresh shared region at a driver-chosen offset of our own fd; no
            // existing memory is affected, and the result is checked before use.
            let pointer = unsafe {
                v4l2::mmap(
                    std::ptr::null_mut(),
                    length,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    device.fd,
                    offset as libc::off_t,
                )
            }
            .map_err(|e| device.error("mmap", e))?;
            ring.buffers.push((pointer as *mut u8, length));
        }
        for index in 0..ring.buffers.len() {
            ring.queue(index)?;
        }
        let mut buffer_type = CAPTURE as c_int;
        // SAFETY: VIDIOC_STREAMON takes an int buffer type.
        unsafe { device.ioctl(vidioc::VIDIOC_STREAMON, &mut buffer_type) }
            .map_err(|e| device.error("VIDIOC_STREAMON", e))?;
        Ok(ring)
    }

    fn buffer_desc(index: u32) -> v4l2_buffer {
        // SAFETY: v4l2_buffer is plain data; all-zero is a valid value.
        let mut buffer: v4l2_buffer = unsafe { std::mem::zeroed() };
        buffer.index = index;
        buffer.type_ = CAPTURE;
        buffer.memory = MEMORY_MMAP;
        buffer
    }

    /// An ioctl on the device fd, whose `Device` outlives the ring.
    fn buffer_ioctl(&self, request: vidioc::_IOC_TYPE, buffer: &mut v4l2_buffer) -> io::Result<()> {
        // SAFETY: only called with QBUF and DQBUF, whose argument is a v4l2_buffer.
        unsafe { ioctl_fd(self.fd, request, buffer) }
    }

    fn error(&self, what: &str, error: io::Error) -> CaptureError {
        if is_gone(&error) {
            CaptureError::Unplugged {
                source_name: self.path.clone(),
            }
        } else {
            CaptureError::Io {
                source_name: self.path.clone(),
                message: format!("{what}: {error}"),
            }
        }
    }

    /// Hands buffer `index` back to the driver.
    pub fn queue(&self, index: usize) -> Result<(), CaptureError> {
        let mut buffer = Self::buffer_desc(index as u32);
        self.buffer_ioctl(vidioc::VIDIOC_QBUF, &mut buffer)
            .map_err(|e| self.error("VIDIOC_QBUF", e))
    }

    /// Waits up to `timeout` for a filled buffer.
    pub fn wait(&self, timeout: Duration) -> Result<Readiness, CaptureError> {
        let mut poll_fd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid pollfd, and the count says one.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Readiness::TimedOut);
            }
            return Err(self.error("poll", e));
        }
        if ready == 0 {
            return Ok(Readiness::TimedOut);
        }
        if poll_fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Ok(Readiness::Broken);
        }
        Ok(Readiness::Ready)
    }

    /// Takes the oldest filled buffer; `None` if there is none yet (EAGAIN).
    pub fn dequeue(&self) -> Result<Option<Dequeued>, CaptureError> {
        let mut buffer = Self::buffer_desc(0);
        match self.buffer_ioctl(vidioc::VIDIOC_DQBUF, &mut buffer) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
            Err(e) => return Err(self.error("VIDIOC_DQBUF", e)),
        }
        let index = buffer.index as usize;
        let Some(&(_, length)) = self.buffers.get(index) else {
            return Err(CaptureError::Io {
                source_name: self.path.clone(),
                message: format!(
                    "driver returned buffer index {index} of {}",
                    self.buffers.len()
                ),
            });
        };
        Ok(Some(Dequeued {
            index,
            bytes_used: (buffer.bytesused as usize).min(length),
            flags: buffer.flags,
            sequence: buffer.sequence,
            timestamp: (buffer.timestamp.tv_sec, buffer.timestamp.tv_usec),
        }))
    }

    /// The first `len` bytes of buffer `index` (clamped to the buffer).
    pub fn data(&self, index: usize, len: usize) -> &[u8] {
        match self.buffers.get(index) {
            // SAFETY: the mapping is `length` bytes, lives until `self` is dropped, and the
            // driver does not write a dequeued buffer until it is queued again, which needs
            // `&self` too, after this borrow ends.
            Some(&(pointer, length)) => unsafe {
                std::slice::from_raw_parts(pointer, len.min(length))
            },
            None => &[],
        }
    }
}

impl Drop for MmapRing {
    fn drop(&mut self) {
        let mut buffer_type = CAPTURE as c_int;
        // SAFETY: VIDIOC_STREAMOFF takes an int buffer type; the fd is still open.
        if let Err(e) = unsafe { ioctl_fd(self.fd, vidioc::VIDIOC_STREAMOFF, &mut buffer_type) } {
            log::debug!("camera {}: STREAMOFF: {e}", self.path);
        }
        for &(pointer, length) in &self.buffers {
            // SAFETY: each (pointer, length) is a mapping this ring made and nothing else
            // unmaps; no borrow of it outlives `&mut self`.
            if let Err(e) = unsafe { v4l2::munmap(pointer as *mut c_void, length) } {
                log::debug!("camera {}: munmap: {e}", self.path);
            }
        }
        // SAFETY: v4l2_requestbuffers is plain data; all-zero is a valid value.
        let mut request: v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        request.type_ = CAPTURE;
        request.memory = MEMORY_MMAP;
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers; the fd is still open.
        if let Err(e) = unsafe { ioctl_fd(self.fd, vidioc::VIDIOC_REQBUFS, &mut request) } {
            log::debug!("camera {}: releasing buffers: {e}", self.path);
        }
    }
}
